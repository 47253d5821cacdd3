//! lb-daemon: an XDP direct-routing load balancer for keepalived + IPVS users.
use std::{io::IsTerminal, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_daemon::{config::Config, daemon};

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
    /// Check a configuration file without touching the system; non-zero exit on an error.
    Check {
        #[arg(long, short = 'f', default_value = "/etc/lb-daemon/lb.toml")]
        config: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Check { config } => {
            let c = Config::load(&config)?;
            c.check_scripts()?;
            println!(
                "{}: OK ({} virtual servers, {} real servers)",
                config.display(),
                c.virtual_servers.len(),
                c.virtual_servers
                    .iter()
                    .map(|v| v.real_servers.len())
                    .sum::<usize>()
            );
            Ok(())
        }
        Cmd::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(daemon::run(config)),
    }
}
