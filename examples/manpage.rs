//! Writes the man pages, generated from the command-line definition so the two cannot
//! drift apart: `ferry.1`, and `ferry-<command>.1` for each command (`ferry-put.1`,
//! `ferry-config-check.1` …), which `ferry.1` names. `cargo run --example manpage -- DIR`
//! (what `make man` does). clap_mangen is a dev-dependency: the daemon's binary does
//! not carry it.

use std::io::Write;

use clap::CommandFactory;

/// What the command-line definition does not say: files, environment, exit codes.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
done
.TP
\fB1\fR
runtime error (the store cannot be read or written, a damaged store: see \fBferry check \-\-repair\fR); or refused because another ferry delivers from the store: \fBferry run\fR, \fBsync \-\-once\fR, \fBmigrate\fR and \fBcheck \-\-repair\fR take the store's run lock, and the message names the holder's pid and command
.TP
\fB2\fR
usage error
.TP
\fB75\fR
\fBsync \-\-once\fR left records pending or failed
.TP
\fB78\fR
config error: \fBferry config check\fR says what to fix (the unit does not restart on it)
.SH ENVIRONMENT
.TP
\fBFERRY_CONFIG\fR
the config file, when \fB\-\-config\fR is not given
.TP
\fBFERRY_LOG\fR, \fBRUST_LOG\fR
the log level, over \fBlog_level\fR
.TP
\fBBACKEND_URL\fR, \fBLOCAL_DB_PATH\fR, \fBSYNC_INTERVAL_MINUTES\fR, \fBDEVICE_ID\fR, \fBSYNC_MODE\fR
override \fBremote.url\fR, \fBstorage.sqlite_path\fR, \fBsync.interval\fR, \fBdevice_id\fR and \fBsync.mode\fR
.SH FILES
.TP
\fI/etc/ferry/ferry.toml\fR
the config. As installed, \fBremote.url\fR is not set: \fBferry run\fR keeps the records
and sends none, and \fBsystemctl status ferry\fR says so, until it is set and the
service reloaded (\fBsystemctl reload ferry\fR)
.TP
\fI/etc/ferry/token\fR
optional bearer token, mode 0600
.TP
\fI/var/lib/ferry/\fR
the state: \fIferry.db\fR (SQLite), \fIjson/\fR (JSON backend), \fIbackups/\fR
.TP
\fI<sqlite_path>.ferry-lock\fR, \fI<json_dir>/.ferry-lock\fR
the store's run lock: held (\fBflock\fR(2)) by the one ferry delivering from it, freed when that process ends, however it ends; its text names the holder and says whether the last \fBferry run\fR stopped cleanly. Do not delete it: a second ferry could then lock a new file of the same name
.TP
\fI/usr/share/doc/ferry/README.md\fR
the full documentation
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.service\fR(5)
"#;

const SOURCE: &str = concat!("ferry ", env!("CARGO_PKG_VERSION"));

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: manpage DIR");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(&dir);
    let mut cli = ferry::cli::Cli::command().disable_help_subcommand(true);
    // Gives each command its display name (`ferry-config-check`).
    cli.build();
    for command in cli.get_subcommands() {
        commands(command, dir)?;
    }

    let man = clap_mangen::Man::new(cli).source(SOURCE);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(EXTRA.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::File::create(dir.join("ferry.1"))?.write_all(&page)
}

/// A page for `command`, then one for each of its own commands.
fn commands(command: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        commands(sub, dir)?;
    }
    clap_mangen::Man::new(command.clone())
        .source(SOURCE)
        .generate_to(dir)?;
    Ok(())
}
