//! `python3` with a package importable, for tests that drive a Python
//! client or server (the official `openai` client, an `mcp` server). A
//! missing package is installed into `~/.cache/aios/python` with pip;
//! without python3 the test fails and says how to get it: a client test
//! that passes without its client tests nothing.
//!
//! Plain `std` only: `edge-agent`'s tests include this file by path.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The interpreter and the `PYTHONPATH` under which `module` (from pip
/// package `package`) imports.
pub fn python_with(module: &str, package: &str) -> (PathBuf, String) {
    let python = PathBuf::from("python3");
    if let Err(err) = Command::new(&python).arg("--version").output() {
        panic!("this test needs python3 with pip (apt-get install python3 python3-pip): {err}");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let target = home.join(".cache/aios/python");
    let python_path = match std::env::var("PYTHONPATH") {
        Ok(existing) if !existing.is_empty() => format!("{}:{existing}", target.display()),
        _ => target.display().to_string(),
    };
    let importable = || {
        let mut probe = Command::new(&python);
        probe.args(["-c", &format!("import {module}")]).env("PYTHONPATH", &python_path).stderr(Stdio::null()).status()
    };
    if !importable().is_ok_and(|status| status.success()) {
        let install = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
            .arg(&target)
            .arg(package)
            .output()
            .expect("pip runs");
        assert!(
            install.status.success(),
            "installing the {package} package failed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        assert!(importable().is_ok_and(|status| status.success()), "{module} is not importable after installing it");
    }
    (python, python_path)
}
