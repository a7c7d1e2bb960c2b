//! ringcast's build helpers (`cargo run -p xtask -- ...`, used by `make install`):
//! man pages generated from the programs' clap definitions, and the check that every
//! flag of every program has help text.

use std::path::{Path, PathBuf};

/// Every argument (flag or positional) of `cmd` and its subcommands that has no help
/// text, as `program subcommand --flag`. Hidden arguments and clap's own `--help` and
/// `--version` are not shown to users and are skipped.
pub fn missing_help(cmd: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(cmd, cmd.get_name(), &mut missing);
    missing
}

fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
    if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
        missing.push(format!("{path} (the command itself)"));
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => format!("<{id}>"),
            };
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

/// Writes `<name>.1` for the program and `<name>-<sub>.1` for each subcommand into
/// `dir`; returns the files written.
pub fn write_man_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut cmd = cmd.clone();
    cmd.build();
    render(&cmd, cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

fn render(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        render(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    #[test]
    fn missing_help_is_found_in_subcommands() {
        let cmd = Command::new("prog")
            .about("a program")
            .arg(Arg::new("good").long("good").help("has help"))
            .arg(Arg::new("bad").long("bad"))
            .arg(Arg::new("secret").long("secret").hide(true))
            .subcommand(
                Command::new("sub")
                    .about("a subcommand")
                    .arg(Arg::new("FILE"))
                    .arg(Arg::new("x").short('x').help("has help")),
            )
            .subcommand(Command::new("bare"));
        assert_eq!(
            missing_help(&cmd),
            [
                "prog --bad",
                "prog sub <FILE>",
                "prog bare (the command itself)"
            ]
        );
    }

    #[test]
    fn man_pages_for_the_program_and_each_subcommand() {
        let cmd = Command::new("prog")
            .about("a program")
            .arg(Arg::new("flag").long("flag").help("what the flag does"))
            .subcommand(Command::new("sub").about("a subcommand"));
        let dir = std::env::temp_dir().join(format!("xtask-man-{}", std::process::id()));
        let files = write_man_pages(&cmd, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["prog.1", "prog-sub.1"]);
        let page = std::fs::read_to_string(&files[0]).unwrap();
        assert!(page.contains(".TH prog 1"), "{page}");
        assert!(page.contains("what the flag does"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
