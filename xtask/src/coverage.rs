//! What the man pages and the shell completions must cover: every command a user can type and each of
//! its long options. One checker for both places that look: xtask's tests (the files `assets` writes)
//! and `tests/systemd_boot.rs` (the files the installed package holds), which includes this file.

use clap::Command;

/// The generated files, however they were read: the main page, and each command's page by command name.
pub struct Assets<'a> {
    pub main_page: &'a str,
    pub command_page: &'a dyn Fn(&str) -> String,
    pub bash: &'a str,
    pub zsh: &'a str,
}

/// Panics, naming what is missing, unless `assets` cover `cli`: its version in the main page, every
/// visible command listed there with a page of its own that lists each of the command's long options,
/// and both shells completing every command and option.
pub fn assert_covers(cli: &Command, assets: &Assets) {
    let bin = cli.get_name();
    // roff escapes '-' as '\-'; clap_complete's bash function names turn it into "__".
    let roff = |s: &str| s.replace('-', "\\-");
    let bash_bin = bin.replace('-', "__");
    if let Some(version) = cli.get_version() {
        assert!(
            assets.main_page.contains(version),
            "the main page does not say version {version}"
        );
    }
    let commands: Vec<_> = cli.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    assert!(commands.len() >= 9, "only {} commands", commands.len());
    for cmd in commands {
        let name = cmd.get_name();
        assert!(
            assets
                .main_page
                .contains(&format!("{}\\-{}(1)", roff(bin), roff(name))),
            "the main page does not list {name}"
        );
        let page = (assets.command_page)(name);
        for long in cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
        {
            let flag = format!("\\-\\-{}", roff(long));
            assert!(page.contains(&flag), "{bin}-{name}.1 lacks {flag}");
            for (shell, script) in [("bash", assets.bash), ("zsh", assets.zsh)] {
                assert!(
                    script.contains(&format!("--{long}")),
                    "{shell} lacks {name} --{long}"
                );
            }
        }
        assert!(
            assets.bash.contains(&format!("{bash_bin},{name})")),
            "bash does not complete {name}"
        );
        assert!(
            assets.zsh.contains(&format!("'{name}:")),
            "zsh does not complete {name}"
        );
    }
}
