//! The README teaches what the binaries do: every flag and environment variable any of them
//! accepts appears in its configuration reference.

use std::process::Command;

#[test]
fn every_flag_and_env_var_is_documented() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let reference = readme
        .split("## Configuration reference")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a configuration reference section");
    let commands: [&[&str]; 10] = [
        &["watcher", "--help"],
        &["watcher", "run", "--help"],
        &["watcher", "plan", "--help"],
        &["backup", "--help"],
        &["backup", "run", "--help"],
        &["backup", "serve", "--help"],
        &["backup", "copy", "--help"],
        &["rollout", "--help"],
        &["rollout", "run", "--help"],
        &["rollout", "serve", "--help"],
    ];
    for cmd in commands {
        let out = Command::new(testbed::workspace_binary(cmd[0]))
            .args(&cmd[1..])
            .output()
            .expect("--help");
        let help = String::from_utf8_lossy(&out.stdout);
        for word in help.split_whitespace() {
            let flag = word.trim_end_matches(',');
            if flag.starts_with("--") && flag.len() > 2 && !["--help", "--version"].contains(&flag)
            {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    reference.contains(&format!("`{flag}`")),
                    "{cmd:?}: {flag} is not in the README"
                );
            }
        }
        for env in help
            .split("[env: ")
            .skip(1)
            .filter_map(|s| s.split('=').next())
        {
            assert!(
                reference.contains(&format!("`{env}`")),
                "{cmd:?}: {env} is not in the README"
            );
        }
    }
}
