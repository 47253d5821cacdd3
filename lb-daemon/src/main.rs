//! lb-daemon: an XDP direct-routing load balancer for keepalived + IPVS users.
use std::{io::IsTerminal, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_daemon::daemon;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Parser)]
#[command(
    version,
    about = "XDP direct-routing load balancer (keepalived + IPVS DR, in Rust)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load balancer.
    Run {
        #[arg(long, short = 'f', default_value = "/etc/lb-daemon/lb.toml")]
        config: PathBuf,
    },
    /// Services, backends and VRRP instances of the running daemon (ipvsadm -Ln --stats style).
    Status {
        /// The same as JSON, on one line (as `ip -j` prints).
        #[arg(long)]
        json: bool,
        /// With --json: laid out for reading (as `ip -j -p`).
        #[arg(long, short = 'p', requires = "json")]
        pretty: bool,
        /// Add per-second rates (two samples a second apart).
        #[arg(long)]
        rate: bool,
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Make the running daemon re-read its configuration (like SIGHUP, but says whether it
    /// was accepted).
    Reload {
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Stop the running daemon: as `global_defs.on_stop` says (release by default), or
    /// releasing (priority-0 adverts, VIPs removed, the XDP program detached and unpinned),
    /// or keeping everything for the next run to take over (a restart or an upgrade).
    Stop {
        #[arg(long, conflicts_with = "keep")]
        release: bool,
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Change a real server of the running daemon, as `ipvsadm -e` does: an override on top
    /// of the file that survives reloads and restarts until reset (`status` marks it).
    RealServer {
        #[command(subcommand)]
        change: RealServerCmd,
        #[arg(long, global = true, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The real server that serves a client: its flow's, else the one a new flow would get
    /// now (persistence, then the scheduler).
    Which {
        /// The client, `IP:PORT` (IPv6 in brackets).
        client: String,
        /// The service, `VIP:PORT[/PROTO]`.
        service: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The connection table (`ipvsadm -Lnc`): client, virtual server, real server, idle time.
    Connections {
        /// Only this service, `VIP:PORT[/PROTO]`.
        #[arg(long)]
        service: Option<String>,
        /// Only flows to this real server, `IP[:PORT]`.
        #[arg(long)]
        real: Option<String>,
        /// Only flows from this client, `IP[:PORT]`.
        #[arg(long)]
        client: Option<String>,
        /// Show at most this many (the total is always said).
        #[arg(long, default_value_t = lb_daemon::control::DEFAULT_CONNECTIONS_LIMIT)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Zero the traffic counters that `status` shows (`ipvsadm -Z`); the metrics go on.
    Zero {
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// What `lb-daemon reload` of another file would change (VIPs, instances, services,
    /// real servers, weights, map writes), changing nothing; whether it would be refused.
    Diff {
        #[arg(long, short = 'f')]
        config: PathBuf,
        #[arg(long, default_value = lb_daemon::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Check a configuration file without touching the system; non-zero exit on an error.
    Check {
        #[arg(long, short = 'f', default_value = "/etc/lb-daemon/lb.toml")]
        config: PathBuf,
    },
    /// Convert a keepalived.conf (and what it includes) into lb-daemon's TOML. Lists what
    /// lb-daemon does not support, and writes nothing then unless --allow-unsupported.
    ImportKeepalived {
        /// The keepalived configuration, e.g. /etc/keepalived/keepalived.conf.
        file: PathBuf,
        /// Where to write the TOML (default: standard output).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Import without what is not supported (still listed, and kept as comments).
        #[arg(long)]
        allow_unsupported: bool,
        /// The interface XDP runs on (default: the one where the virtual servers' VIPs are).
        #[arg(long)]
        interface: Option<String>,
        /// What a firewall mark stands for: `N=ADDRESS [PORT],ADDRESS [PORT]...` (keepalived's
        /// virtual_server_group entries: the addresses and ports your firewall marks with N).
        /// A `virtual_server fwmark N` becomes one service of those. Repeat for each mark.
        #[arg(long, value_name = "N=ENTRIES")]
        fwmark: Vec<String>,
    },
    /// Set this host up as a direct-routing real server, as the seed's /etc/init.d/ipvsadm
    /// script does: the VIPs on lo, arp_ignore=1 and arp_announce=2; `stop` undoes it.
    Realserver {
        #[command(subcommand)]
        action: lb_daemon::realserver::Action,
    },
}

/// `SERVICE` is `VIP:PORT[/PROTO]`, `REAL` is `IP[:PORT]` (IPv6 in brackets with a port).
#[derive(Subcommand)]
enum RealServerCmd {
    /// Weight 0: no new connection; established ones go on.
    Drain { service: String, real: String },
    /// Serve with this weight while up, whatever the file says.
    Weight {
        service: String,
        real: String,
        #[arg(value_parser = clap::value_parser!(u32).range(0..=i64::from(lb_daemon::config::MAX_WEIGHT)))]
        weight: u32,
    },
    /// Out, as if its checks failed.
    Disable { service: String, real: String },
    /// Undo `disable` and `drain`.
    Enable { service: String, real: String },
    /// Remove the real server's overrides, or with --all every override.
    Reset {
        #[arg(required_unless_present = "all")]
        service: Option<String>,
        #[arg(required_unless_present = "all")]
        real: Option<String>,
        #[arg(long, conflicts_with_all = ["service", "real"])]
        all: bool,
    },
}

impl RealServerCmd {
    fn request(self) -> lb_daemon::control::Request {
        use lb_daemon::model::RealServerAction as A;
        let (service, real, action, all) = match self {
            RealServerCmd::Drain { service, real } => (Some(service), Some(real), A::Drain, false),
            RealServerCmd::Weight {
                service,
                real,
                weight,
            } => (Some(service), Some(real), A::Weight(weight), false),
            RealServerCmd::Disable { service, real } => {
                (Some(service), Some(real), A::Disable, false)
            }
            RealServerCmd::Enable { service, real } => {
                (Some(service), Some(real), A::Enable, false)
            }
            RealServerCmd::Reset { service, real, all } => (service, real, A::Reset, all),
        };
        lb_daemon::control::Request::RealServer {
            service,
            real,
            action,
            all,
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        // `lb-daemon stop --release`: the operator took the node out, and systemd must not
        // start it again (the unit's `RestartPreventExitStatus`).
        Ok(()) if daemon::released_on_request() => {
            std::process::ExitCode::from(daemon::EXIT_RELEASED)
        }
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: messages here often carry their
/// cause already ("file: cannot read: No such file..."), and a user wants neither the
/// repetition nor a backtrace.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // The daemon's lines go through a writer thread: formatting stays on the logging thread,
    // but the write (and the stderr lock) does not, so a log line of the main loop can never
    // hold up the VRRP thread between its takeover advert and its gratuitous ARP (measured:
    // a takeover waited on the main loop's write). Not lossy: when the writer falls 128k
    // lines behind, logging waits, as it would on stderr. `_flush` writes what is queued
    // when `run` returns, before main prints an error. The CLI commands write directly.
    let (writer, _flush) = if matches!(cli.cmd, Cmd::Run { .. }) {
        let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("log")
            .finish(std::io::stderr());
        (BoxMakeWriter::new(w), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .init();
    match cli.cmd {
        Cmd::Check { config } => {
            let c = lb_daemon::daemon::check_file(&config)?;
            println!(
                "{}: OK ({})",
                config.display(),
                lb_daemon::daemon::summary(&c)
            );
            Ok(())
        }
        Cmd::ImportKeepalived {
            file,
            output,
            allow_unsupported,
            interface,
            fwmark,
        } => lb_daemon::import::cli(
            &file,
            output.as_deref(),
            allow_unsupported,
            interface,
            &fwmark,
        ),
        Cmd::Status {
            json,
            pretty,
            rate,
            socket,
        } => {
            use lb_daemon::control::Json;
            let layout = json.then_some(if pretty { Json::Pretty } else { Json::Compact });
            let out = if rate {
                let second = std::time::Duration::from_secs(1);
                lb_daemon::control::cli_status_rate(&socket, second, layout)?
            } else {
                lb_daemon::control::cli_status(&socket, layout)?
            };
            print!("{out}");
            Ok(())
        }
        Cmd::Stop {
            release,
            keep,
            socket,
        } => {
            let mode = (release || keep).then_some(release);
            lb_daemon::control::cli_stop(&socket, mode)?;
            println!("stopping");
            Ok(())
        }
        Cmd::Reload { socket } => {
            lb_daemon::control::cli_reload(&socket)?;
            println!("reloaded");
            Ok(())
        }
        Cmd::Realserver { action } => lb_daemon::realserver::cli(action),
        Cmd::RealServer { change, socket } => {
            println!(
                "{}",
                lb_daemon::control::cli_change(&socket, change.request())?
            );
            Ok(())
        }
        Cmd::Connections {
            service,
            real,
            client,
            limit,
            json,
            socket,
        } => {
            let r = lb_daemon::control::Request::Connections {
                service,
                real,
                client,
                limit,
            };
            print!("{}", lb_daemon::control::cli_connections(&socket, r, json)?);
            Ok(())
        }
        Cmd::Which {
            client,
            service,
            json,
            socket,
        } => {
            let r = lb_daemon::control::Request::Which { client, service };
            print!("{}", lb_daemon::control::cli_which(&socket, r, json)?);
            Ok(())
        }
        Cmd::Diff { config, socket } => {
            // The daemon reads the file: it needs the whole path.
            let config = std::fs::canonicalize(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let r = lb_daemon::control::Request::Diff {
                config: config.to_string_lossy().into_owned(),
            };
            print!("{}", lb_daemon::control::cli_change(&socket, r)?);
            Ok(())
        }
        Cmd::Zero { socket } => {
            let r = lb_daemon::control::Request::Zero;
            println!("{}", lb_daemon::control::cli_change(&socket, r)?);
            Ok(())
        }
        Cmd::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(daemon::run(config)),
    }
}
