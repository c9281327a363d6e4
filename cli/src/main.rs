//! The `ringwire` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

use std::time::Duration;

use ringwire::decode::{decode_stream, render_text};
use ringwire::proto::{EntityAddr, EntityName, EntityType, FrameLimits};

#[derive(Parser)]
#[command(
    name = "ringwire",
    version,
    about = "A msgr2 messenger for storage servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode raw msgr2 byte streams (one direction each, starting with the banner).
    Decode {
        /// Files holding the raw bytes.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON, one object per file.
        #[arg(long)]
        json: bool,
        /// Largest segment accepted, in bytes.
        #[arg(long, default_value_t = FrameLimits::default().max_segment)]
        max_segment: u32,
    },
    /// Echo server: every message comes back on its connection.
    Serve {
        /// Address to listen on, Ceph syntax (v2:127.0.0.1:3300, v2:[::1]:3300); repeatable.
        #[arg(long, required = true, value_parser = cmd::parse_addr)]
        bind: Vec<EntityAddr>,
        /// Our entity name.
        #[arg(short = 'n', long, default_value = "osd.0", value_parser = cmd::parse_entity_name)]
        name: EntityName,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// Address nonce; clients must name it (v2:IP:PORT/NONCE) unless it is 0.
        #[arg(long, default_value_t = 0)]
        nonce: u32,
        /// Keyring of the clients admitted with cephx (`keyring`), as a monitor's database:
        /// with it, cephx is required (`auth_service_required`, `auth_cluster_required`).
        #[arg(short = 'k', long)]
        keyring: Option<std::path::PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Round-trip times to any msgr2 peer, measured with KEEPALIVE2.
    Ping {
        /// The peer, Ceph syntax (v2:127.0.0.1:3300).
        #[arg(value_parser = cmd::parse_addr)]
        addr: EntityAddr,
        /// What the peer must be (mon, osd, mgr, mds, client); default: any.
        #[arg(long, default_value = "any", value_parser = cmd::parse_entity_type)]
        peer_type: EntityType,
        /// Our entity name, whose key the keyring holds.
        #[arg(short = 'n', long, default_value = "client.admin", value_parser = cmd::parse_entity_name)]
        name: EntityName,
        #[command(flatten)]
        auth: cmd::AuthArgs,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Milliseconds between pings.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Seconds to wait for the handshake or a reply.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Loopback benchmark: server and client in this process, against raw std and io_uring
    /// baselines measured in the same run.
    Bench {
        /// Policy pair: lossless (lossless_client/stateful_server), lossy, or peer.
        #[arg(long, default_value = "lossless")]
        policy: String,
        /// Payload bytes of each ping-pong and rate-phase message, Ringwire (front segment,
        /// sequence number in the first 8 bytes) and baselines alike; at least 8.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Payload bytes of each stream message, Ringwire (data segment) and baselines alike.
        #[arg(long, default_value_t = 4 << 20)]
        large: usize,
        /// Connections for the many-connection message rate (all on one worker).
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Seconds of the many-connection phase, per round.
        #[arg(long, default_value_t = 1.0)]
        duration: f64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Ping-pong round trips per round.
        #[arg(long, default_value_t = 5000)]
        iters: usize,
        /// Fault one received batch in N on both sides, and report lost, duplicated and
        /// reordered messages (lossless policies recover; nothing may be lost).
        #[arg(long, default_value_t = 0)]
        inject_socket_failures: u32,
        /// CPU to pin the whole benchmark to (default: CPU 1 when there are several).
        #[arg(long)]
        cpu: Option<usize>,
        /// Do not pin.
        #[arg(long)]
        no_pin: bool,
        #[arg(long)]
        json: bool,
        /// Serve the server messenger's Prometheus metrics at http://ADDR/metrics while running.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// How the messengers talk: tcp, or rdma (needs an RDMA device; see docs/rdma.md).
        #[arg(long, default_value = "tcp")]
        transport: String,
        /// RDMA: microseconds a worker polls its completion queue before sleeping.
        #[arg(long, default_value_t = 0)]
        busy_poll_us: u64,
        /// The rados-rs peer program (default: `rados-peer` beside this binary, built by
        /// `cargo build --release -p ringwire-rados-peer`).
        #[arg(long)]
        rados_peer: Option<std::path::PathBuf>,
        /// Do not measure rados-rs.
        #[arg(long)]
        no_rados: bool,
        /// Do not start a ceph-mon to measure Ceph's AsyncMessenger.
        #[arg(long)]
        no_ceph: bool,
        /// Also write the report as a self-contained HTML page (latency CDF, bars against the
        /// baselines and peers).
        #[arg(long, value_name = "FILE.html")]
        report: Option<std::path::PathBuf>,
        /// Also measure how latency, throughput, rate and memory grow with the message size
        /// (64 B to 16 MiB) and the connection count (1 to 5 000), a run of this binary per
        /// point (a few minutes).
        #[arg(long)]
        scale: bool,
        /// crc, or secure: also measure ping-pong and stream with cephx and secure mode,
        /// beside crc mode in the same run.
        #[arg(long, default_value = "crc")]
        mode: String,
        /// The benchmark client's entity name (default: client.1, or osd.1 with --policy
        /// peer); with --mode secure, whose key -k holds.
        #[arg(short = 'n', long, value_parser = cmd::parse_entity_name)]
        name: Option<EntityName>,
        /// --mode secure: the keyring holding the client's key (Ceph's -k). The benchmark's
        /// own monitor is given that key (in a 0600 temporary keyring, removed at the end);
        /// without -k a key is made for the run.
        #[arg(short = 'k', long)]
        keyring: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    // RUST_LOG=ringwire=debug shows every connection event; by default warnings, and what
    // the commands themselves report (serve: each accepted session).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ringwire::cmd=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench {
            policy,
            size,
            large,
            connections,
            duration,
            rounds,
            iters,
            inject_socket_failures,
            cpu,
            no_pin,
            json,
            metrics,
            transport,
            busy_poll_us,
            rados_peer,
            no_rados,
            no_ceph,
            report: html,
            scale,
            mode,
            name,
            keyring,
        } => {
            if policy == "lossy" && inject_socket_failures > 0 {
                eprintln!("ringwire bench: a lossy policy loses messages on faults by design; inject failures with --policy lossless or peer");
                return ExitCode::from(2);
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let cpu = if no_pin {
                None
            } else {
                cpu.or(Some(if cpus > 1 { 1 } else { 0 }))
            };
            let args = cmd::bench::BenchArgs {
                policy,
                small: size,
                large,
                connections,
                duration: Duration::from_secs_f64(duration),
                rounds: rounds.max(1),
                iters: iters.max(10),
                inject: inject_socket_failures,
                cpu,
                metrics,
                transport,
                busy_poll: Duration::from_micros(busy_poll_us),
                rados_peer: if no_rados {
                    None
                } else {
                    rados_peer.or_else(cmd::bench::default_rados_peer)
                },
                ceph: !no_ceph,
                mode,
                name,
                keyring,
            };
            if let Err(e) = args.validate() {
                eprintln!("ringwire bench: {e}");
                return ExitCode::from(2);
            }
            let with_scale = |mut report: cmd::bench::Report| {
                if scale {
                    let exe = std::env::current_exe().map_err(|e| format!("--scale: {e}"))?;
                    cmd::bench::add_scale(&mut report, &exe)?;
                }
                Ok::<_, String>(report)
            };
            let report = match cmd::bench::run(args).and_then(with_scale) {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("ringwire bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if json {
                println!("{}", serde_json::to_string(&report).expect("serialisable"));
            } else {
                cmd::bench::print(&report);
            }
            if let Some(path) = html {
                if let Err(e) = std::fs::write(&path, cmd::bench::html_page(&report)) {
                    eprintln!("ringwire bench: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Serve {
            bind,
            name,
            workers,
            nonce,
            keyring,
            metrics,
        } => report(cmd::serve::run(
            name, bind, workers, nonce, keyring, metrics,
        )),
        Command::Ping {
            addr,
            peer_type,
            name,
            auth,
            count,
            interval_ms,
            timeout,
        } => report(cmd::ping::run(cmd::ping::PingArgs {
            addr,
            peer_type,
            name,
            auth,
            count,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(timeout),
        })),
        Command::Decode {
            files,
            json,
            max_segment,
        } => {
            let limits = FrameLimits {
                max_segment,
                ..FrameLimits::default()
            };
            let mut status = ExitCode::SUCCESS;
            for file in files {
                let name = file.display().to_string();
                let data = match std::fs::read(&file) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("ringwire decode: {name}: {e}");
                        return ExitCode::from(2);
                    }
                };
                match decode_stream(&data, limits) {
                    Ok(report) if json => {
                        let v = serde_json::json!({"file": name, "ok": true, "report": report});
                        println!("{v}");
                    }
                    Ok(report) => print!("{}", render_text(&name, &report)),
                    Err(err) => {
                        if json {
                            let v = serde_json::json!({
                                "file": name, "ok": false, "offset": err.offset,
                                "error": err.kind.to_string(), "report": err.partial,
                            });
                            println!("{v}");
                        } else if let Some(partial) = &err.partial {
                            print!(
                                "{}",
                                render_text(&name, partial)
                                    .lines()
                                    .take_while(|l| !l.ends_with("all CRCs ok"))
                                    .map(|l| format!("{l}\n"))
                                    .collect::<String>()
                            );
                        }
                        eprintln!("ringwire decode: {name}: {err}");
                        status = ExitCode::FAILURE;
                    }
                }
            }
            status
        }
    }
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringwire: {e}");
            ExitCode::FAILURE
        }
    }
}
