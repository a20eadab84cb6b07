//! Issue #15's conventions: `pathtrace completions bash` works when a real bash sources it (it
//! completes the verbs and a verb's options), and `pathtrace man` is a page `man` renders, both
//! from the clap definition that makes `--help`.

use std::process::Command;

use crate::support::{lab::pathtrace, BIN};

/// What bash's completion of `words` (the last one being completed) offers, after sourcing the
/// script `pathtrace completions bash` printed.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}; COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
         COMP_POINT=${{#COMP_LINE}}; _pathtrace pathtrace '{cur}' '{prev}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_works_when_sourced() {
    let out = pathtrace(&["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tracer::capture::testframes::TempDir::new("completions");
    let script = dir.0.join("pathtrace.bash");
    std::fs::write(&script, &out.stdout).expect("write the script");
    let check = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "source {} && complete -p pathtrace",
            script.display()
        ))
        .output()
        .expect("run bash");
    let registered = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && registered.contains("pathtrace"),
        "{registered} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let verbs = bash_completes(&script, &["pathtrace", "s"]);
    assert!(verbs.iter().any(|v| v == "show"), "{verbs:?}");
    let options = bash_completes(&script, &["pathtrace", "show", "--"]);
    assert!(
        options.iter().any(|o| o == "--json") && options.iter().any(|o| o == "--write"),
        "{options:?}"
    );
    for shell in ["zsh", "fish"] {
        let out = pathtrace(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
    let bad = pathtrace(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_man_page_renders() {
    let dir = tracer::capture::testframes::TempDir::new("man");
    let page = dir.0.join("pathtrace.1");
    let out = Command::new(BIN)
        .arg("man")
        .output()
        .expect("run pathtrace man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&page, &out.stdout).expect("write the page");
    let shown = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("run man (apt-get install man-db)");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for want in [
        "NAME",
        "SYNOPSIS",
        "pathtrace",
        "verify",
        "show",
        "--container",
    ] {
        assert!(
            text.contains(want),
            "the rendered page lacks {want:?}:\n{text}"
        );
    }
}
