//! The command line (SPEC section 1): `run`, `validate`, `version`, and
//! `completions` / `man` generated from this same definition, and
//! `schema`, the config file's JSON Schema derived from its types.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "portcullis", about = "A fast, secure API gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr; `auto` is human on a terminal, JSON otherwise.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    /// Log filter, `RUST_LOG` style (e.g. `info`, `portcullis=debug`).
    #[arg(long, global = true, default_value = "info", value_parser = log_filter)]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        /// Config file (default ./portcullis.yaml, or $PORTCULLIS_CONFIG).
        #[arg(short, long, env = "PORTCULLIS_CONFIG", default_value = "portcullis.yaml")]
        config: PathBuf,
        /// Worker threads (default: one per CPU core).
        #[arg(long)]
        workers: Option<usize>,
        /// Do not reload when the config file changes (SIGHUP and the admin
        /// API still reload it).
        #[arg(long)]
        no_watch: bool,
    },
    /// Serve a demo: the gateway in front of sample services in this
    /// process, with a tour of curl commands to try.
    Demo {
        /// The gateway's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Check a config file: exit 0 if valid, 1 with every error listed.
    Validate {
        #[arg(short, long, env = "PORTCULLIS_CONFIG", default_value = "portcullis.yaml")]
        config: PathBuf,
    },
    /// Show which route a request would take and why, its plugins and its
    /// upstream, without sending anything. Exit 1 when no route takes it.
    Explain {
        #[arg(short, long, env = "PORTCULLIS_CONFIG", default_value = "portcullis.yaml")]
        config: PathBuf,
        /// The request's method (GET, POST, …).
        method: String,
        /// A URL (`http://api.example.com/users/7?x=1`) or a path.
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the version and enabled features.
    Version,
    /// Print a shell completion script (bash, zsh or fish).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), e.g. `portcullis man > portcullis.1`.
    Man,
    /// Print the JSON Schema of the config file (for editors: see docs/configuration.md).
    Schema {
        /// Print the configuration reference in Markdown instead (docs/config-reference.md).
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

/// A `--log-level` that does not read is a usage error, not a silent `info`.
fn log_filter(level: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| level.to_string())
        .map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Writes `bytes` to stdout. A reader that stops early (`| head`) is not
/// an error and no panic (what `print!` does): the rest is dropped.
fn emit(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help`: printed on stdout, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bad argument: the error, with the usage line, and exit 2.
        Err(e) => {
            let text = e.render().to_string();
            eprint!("{text}");
            if !text.contains("Usage:") {
                // The usage of the subcommand given, if one was.
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                cmd.build();
                let sub = std::env::args().skip(1).find(|a| !a.starts_with('-'));
                let usage = match sub.as_deref().and_then(|s| cmd.find_subcommand_mut(s)) {
                    Some(sub) => sub.render_usage(),
                    None => cmd.render_usage(),
                };
                eprintln!("\n{usage}");
            }
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Version => emit(
            format!(
                "portcullis {}\n\
                 features: http1, h2c, tls, routing, load-balancing, retries, health-checks, circuit-breaker, hot-reload, admin-api, prometheus-metrics, access-log, otlp-traces, websocket, grpc, grpc-web, grpc-transcode, aggregate\n\
                 plugins: ip_restriction, waf, cors, api_key, jwt, phantom_token, hmac_auth, acl, rate_limit, request_validation, request_transform, cache, response_transform, compression\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_bytes(),
        ),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "portcullis", &mut script);
            emit(&script)
        }
        Command::Demo { port } => {
            init_logging(cli.log_format, &cli.log_level);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(crate::demo::run(port, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("{reason}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
            json,
        } => {
            let runtime = match crate::snapshot::load(&config) {
                Ok((_, runtime)) => runtime,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            match crate::explain::explain(&runtime, &method, &url, &headers) {
                Ok(e) => {
                    let text = if json {
                        serde_json::to_string_pretty(&e.json).unwrap_or_default() + "\n"
                    } else {
                        crate::explain::text(&e)
                    };
                    match emit(text.as_bytes()) {
                        code if code != ExitCode::SUCCESS => code,
                        _ if e.routed => ExitCode::SUCCESS,
                        _ => ExitCode::from(1),
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Schema { markdown } => {
            if markdown {
                emit(crate::config::reference_markdown().as_bytes())
            } else {
                emit((crate::config::json_schema() + "\n").as_bytes())
            }
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => emit(&page),
                Err(e) => {
                    eprintln!("cannot write the man page: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Validate { config } => match crate::snapshot::load(&config) {
            Ok((loaded, runtime)) => emit(
                format!(
                    "{}: ok ({}, {})\n",
                    loaded.source,
                    count(runtime.routes.len(), "route"),
                    count(runtime.upstreams.len(), "upstream")
                )
                .as_bytes(),
            ),
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            workers,
            no_watch,
        } => {
            init_logging(cli.log_format, &cli.log_level);
            let startup = match crate::Startup::load(config) {
                Ok(mut ok) => {
                    ok.watch = !no_watch;
                    ok
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let workers =
                workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let rt = if workers <= 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            };
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(crate::run(startup, || {}, shutdown_signal())) {
                Ok(()) => {
                    tracing::info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    // One plain line, whatever the log format.
                    eprintln!("{reason}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
