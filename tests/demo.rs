//! The README's first command, `elb-sim demo`, as a test: with elb-drain a stop loses nothing; the
//! naive stop next to it does cut connections.

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_loses_nothing_with_elb_drain_and_shows_the_naive_stop_failing() {
    let agent = Path::new(env!("CARGO_BIN_EXE_elb-drain"));
    let with = elb_sim::demo::act(agent, true).await.expect("act 1");
    assert_eq!(with.agent_exit, Some(0), "{with:?}");
    assert_eq!(
        (with.failed, with.streams_cut, with.late_on_a),
        (0, 0, 0),
        "{with:?}"
    );
    assert!(with.served > 50, "{with:?}");
    assert!(
        with.delete_after_ms.is_some_and(|ms| ms < 1000.0),
        "{with:?}"
    );
    let naive = elb_sim::demo::act(agent, false).await.expect("act 2");
    assert!(
        naive.streams_cut > 0 || naive.failed > 0,
        "the naive stop should hurt: {naive:?}"
    );
}
