//! The operator's kit: the commands that need no config file. `vsync init` prints a starter
//! config (the text is `vsync_config::starter`), `vsync completions SHELL` a completion script
//! (clap_complete), `vsync man` the roff manual pages (clap_mangen).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::{Cli, Command};

/// Runs a command that needs no config file; `None` for every other command.
pub fn without_config(command: &Command) -> Option<ExitCode> {
    let result = match command {
        Command::Init { origin, destinations, mounts } => {
            // Checked here rather than by clap, whose errors echo the raw value (an address
            // may carry credentials; ours are redacted).
            let parsed: Result<Vec<_>, _> = destinations.iter().map(|d| vsync_config::starter::parse_destination(d)).collect();
            match parsed.and_then(|dests| vsync_config::starter::starter_config(origin, &dests, mounts)) {
                Ok(text) => write_stdout(text.as_bytes()),
                Err(e) => {
                    // A usage error (exit 2), like clap's own.
                    eprintln!("error: {e}");
                    return Some(ExitCode::from(2));
                }
            }
        }
        Command::Completions { shell } => completions(*shell),
        Command::Man { dir } => man(dir.as_deref()),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    })
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).context("cannot write to stdout")
}

/// The completion script for `shell`, on stdout.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vsync", &mut script);
    write_stdout(&script)
}

/// `vsync(1)` on stdout, or with `dir` every page (`vsync.1`, `vsync-run.1`,
/// `vsync-plugin-validate.1`, ...) written into it, one path per line on stdout.
fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).context("cannot render the man page")?;
        return write_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fn pages(cmd: clap::Command, dir: &Path, written: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            pages(sub, dir, written)?;
        }
        let man = clap_mangen::Man::new(cmd);
        let path = dir.join(man.get_filename());
        written.push(man.generate_to(dir).with_context(|| format!("cannot write {}", path.display()))?);
        Ok(())
    }
    let mut written = Vec::new();
    pages(cmd, dir, &mut written)?;
    written.sort();
    let list: String = written.iter().map(|p| format!("{}\n", p.display())).collect();
    write_stdout(list.as_bytes())
}
