//! `cairn node`: runs a data node in the foreground until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use cairn_server::{Node, NodeConfig};

use crate::args::NodeArgs;

pub async fn run(args: NodeArgs) -> ExitCode {
    init_tracing();
    let mut config = NodeConfig::new(args.id, args.data_dir, args.listen);
    config.advertise = args.advertise;
    config.zone = args.zone;
    config.max_body_bytes = args.max_body_bytes;
    config.max_connections = args.max_connections;
    config.write_timeout_ms = args.write_timeout_ms;
    config.peer_listen = args.peer_listen;
    config.peers = args.peers.0;
    config.tick_ms = args.tick_ms;
    config.election_timeout_ms = args.election_timeout_ms;
    config.log_retain_entries = args.log_retain_entries;
    config.changes_window = cairn_storage::changes::Window {
        entries: args.changes_window_entries,
        bytes: args.changes_window_bytes,
    };
    config.feeds_max = args.feeds_max;
    config.backup_dir = args.backup_dir;
    config.join = args.join;
    config.browser.allowed_hosts = args.allow_hosts;
    config.certs_dir = args.certs_dir;
    config.insecure = args.insecure;
    config.admin_token_file = args.admin_token_file;
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(id = args.id, addr = %node.local_addr(), "node started");
    match node.serve(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("node stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// `cairn cert`: makes the cluster's CA, or a node's certificate.
/// `cairn release`: this very binary, packed for the hosts that will run it.
pub fn release(output: crate::args::Output, args: &crate::args::ReleaseArgs) -> ExitCode {
    let packed = std::env::current_exe()
        .map_err(|e| format!("cannot find this binary: {e}"))
        .and_then(|binary| {
            cairn_release::pack(&binary, cairn_util::version(), cairn_release::TARGET, &args.out)
                .map_err(|e| e.to_string())
        });
    match packed {
        Ok(packed) => {
            let answer = serde_json::json!({
                "version": cairn_util::version(),
                "target": cairn_release::TARGET,
                "artifact": packed.artifact,
                "sha256": packed.sha256,
                "bytes": packed.bytes,
                "sums": packed.sums,
            });
            crate::output::success(output, &answer, || {
                format!(
                    "artifact: {}\nsha256: {}\nbytes: {}\nsums: {}",
                    packed.artifact.display(),
                    packed.sha256,
                    packed.bytes,
                    packed.sums.display()
                )
            })
        }
        Err(message) => crate::output::failed(output, "release_failed", &message),
    }
}

/// `cairn restore`: a new data directory from a backup, checked first.
pub fn restore(output: crate::args::Output, args: &crate::args::RestoreArgs) -> ExitCode {
    let restored = restore_from(&args.from, &args.data_dir).map_err(|e| e.to_string());
    match restored {
        Ok(manifest) => {
            let answer = serde_json::json!({
                "name": manifest.name,
                "applied_index": manifest.applied_index,
                "fingerprint": manifest.fingerprint,
                "data_dir": args.data_dir,
            });
            crate::output::success(output, &answer, || {
                format!(
                    "restored backup {} (index {}, fingerprint {}) into {}\nrun it: cairn node \
                     --id 1 --data-dir {} (add --peer-listen to grow it with cairn member add)",
                    manifest.name,
                    manifest.applied_index,
                    manifest.fingerprint,
                    args.data_dir.display(),
                    args.data_dir.display()
                )
            })
        }
        Err(message) => crate::output::failed(output, "restore_failed", &message),
    }
}

fn restore_from(
    from: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<cairn_storage::backup::Manifest, cairn_storage::Error> {
    use cairn_storage::backup::{self, DirSink};
    let refused = |reason: String| cairn_storage::Error::Backup { reason };
    let name = from
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refused(format!("{} does not end in a backup's name", from.display())))?;
    let root =
        from.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let sink = DirSink::existing(root)?;
    // The scratch copy goes beside the new data directory, on its file system.
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    backup::restore(&sink, name, parent, data_dir)
}

/// `cairn cert init`: the CA under `certs_dir/ca` and each node's directory
/// `certs_dir/node-ID`, each made only when missing.
fn init_certs(
    certs_dir: &std::path::Path,
    nodes: &[(u64, Vec<String>)],
) -> Result<serde_json::Value, cairn_tls::Error> {
    let ca_dir = certs_dir.join("ca");
    let ca_made = !ca_dir.join(cairn_tls::CA_CERT_FILE).exists();
    let ca = if ca_made { cairn_tls::Ca::create(&ca_dir)? } else { cairn_tls::Ca::load(&ca_dir)? };
    let (mut made, mut kept) = (Vec::new(), Vec::new());
    for (id, names) in nodes {
        let dir = certs_dir.join(format!("node-{id}"));
        if dir.join(cairn_tls::node_cert_file(*id)).exists() {
            kept.push(dir);
        } else {
            ca.issue_node(&dir, *id, names)?;
            made.push(dir);
        }
    }
    Ok(serde_json::json!({
        "ca": ca_dir,
        "ca_made": ca_made,
        "made": made,
        "kept": kept,
    }))
}

pub fn cert(output: crate::args::Output, command: crate::args::CertCommand) -> ExitCode {
    use crate::args::CertCommand;
    let made = match command {
        CertCommand::CreateCa { certs_dir } => cairn_tls::Ca::create(&certs_dir).map(|_| {
            serde_json::json!({
                "ca_cert": certs_dir.join(cairn_tls::CA_CERT_FILE),
                "ca_key": certs_dir.join(cairn_tls::CA_KEY_FILE),
            })
        }),
        CertCommand::CreateNode { id, certs_dir, ca_dir, hosts } => {
            let ca_dir = ca_dir.unwrap_or_else(|| certs_dir.clone());
            // Clients must find the name they dialed in the certificate
            // (the API speaks HTTPS): loopback unless told otherwise.
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hosts
            };
            cairn_tls::Ca::load(&ca_dir)
                .and_then(|ca| ca.issue_node(&certs_dir, id, &hosts))
                .map(|cert| {
                    serde_json::json!({
                        "node": id,
                        "cert": cert,
                        "key": certs_dir.join(cairn_tls::node_key_file(id)),
                        "names": std::iter::once(cairn_tls::peer_name(id)).chain(hosts).collect::<Vec<_>>(),
                    })
                })
        }
        CertCommand::Init { certs_dir, nodes } => init_certs(&certs_dir, &nodes),
    };
    match made {
        Ok(answer) => {
            match output {
                crate::args::Output::Json => println!("{answer}"),
                crate::args::Output::Text => {
                    for (name, value) in answer.as_object().into_iter().flatten() {
                        println!(
                            "{name}: {}",
                            value.as_str().map_or(value.to_string(), str::to_string)
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
