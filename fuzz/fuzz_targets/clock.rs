//! Shared by the configuration targets: every duration a configuration holds can be added to the clock,
//! since the agent's deadlines are `now + d` (a duration past the clock once panicked a drain).

use elb_drain::config::Config;

pub fn assert_durations_fit(config: &Config) {
    let now = std::time::Instant::now();
    for d in [
        config.cloud.connect_timeout,
        config.cloud.request_timeout,
        config.cloud.retry_deadline,
        config.cloud.discovery_interval,
        config.drain.timeout,
        config.drain.settle,
        config.drain.poll_interval,
        config.drain.min_healthy_wait,
        config.drain.stall_timeout,
        config.register.healthy_timeout,
    ]
    .into_iter()
    .chain(
        config
            .autoscaling
            .iter()
            .flat_map(|a| [a.poll_interval, a.extend_margin]),
    ) {
        assert!(
            now.checked_add(d * 4).is_some(),
            "{d:?} does not fit the clock"
        );
    }
}
