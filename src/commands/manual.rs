//! `cairn completions SHELL` and `cairn man [COMMAND] [--dir DIR]`: shell
//! completion scripts and manual pages generated from the clap definitions
//! in `cli.rs`, so they never drift from what the binary accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::error::{Error, Result};

/// The whole command line as clap sees it, without the `help` subcommand
/// (which has no page and completes nothing useful).
fn definition() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = definition();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cairn", &mut out);
    write_stdout(&out)
}

/// Print one manual page (roff) on stdout, or write every page to `--dir`.
pub fn man(a: &ManArgs) -> Result<()> {
    let root = definition();
    if let Some(dir) = &a.dir {
        return write_pages(root, dir);
    }
    let mut cmd = &root;
    for (i, name) in a.command.iter().enumerate() {
        cmd = cmd
            .get_subcommands()
            .find(|c| {
                !c.is_hide_set() && (c.get_name() == name || c.get_all_aliases().any(|x| x == name))
            })
            .ok_or_else(|| {
                let known: Vec<&str> = cmd
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(clap::Command::get_name)
                    .collect();
                let parent = std::iter::once("cairn")
                    .chain(a.command[..i].iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                Error::usage(format!("`{parent}` has no command {name:?}"))
                    .with_hint(format!("pages exist for: {}", known.join(", ")))
            })?;
    }
    let mut out = Vec::new();
    page(cmd)
        .render(&mut out)
        .map_err(|e| Error::io("rendering the manual page", e))?;
    write_stdout(&out)
}

/// `cairn.1` and `cairn-COMMAND[-SUBCOMMAND].1` for every visible command.
fn write_pages(root: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    fn write(cmd: &clap::Command, dir: &Path) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            write(sub, dir)?;
        }
        let page = page(cmd);
        let path = dir.join(page.get_filename());
        page.generate_to(dir)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(())
    }
    write(&root, dir)
}

/// The page of `cmd` (a built command, so a subcommand is named
/// `cairn-COMMAND`), every one marked with cairn's version.
fn page(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone()).source(format!("cairn {}", env!("CARGO_PKG_VERSION")))
}

/// Write all of `bytes` to stdout; a closed pipe (`cairn man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Error::io("writing to standard output", e)),
    }
}
