//! One-shot client commands: one request, its result printed, exit code 0 on
//! success, 1 on an error from the node or the network, 2 on bad usage.

use std::io::Read as _;
use std::process::ExitCode;

use cairn_client::{Client, Read};
use serde_json::{json, Value};

use crate::args::{
    BackupArgs, BackupCommand, ClusterCommand, Command, DocCommand, Global, MemberCommand, Output,
    TableCommand, TokenCommand, WatchArgs,
};
use crate::output::{self, pretty, value_json};

pub async fn run(global: &Global, command: Command) -> ExitCode {
    let client = match global.client(&global.addr) {
        Ok(client) => client,
        Err(e) => return output::usage(global.output, &e),
    };
    execute(&client, global.output, command).await
}

/// Runs one client command against `client`.
pub async fn execute(client: &Client, out: Output, command: Command) -> ExitCode {
    match command {
        Command::Put { key, value } => {
            let result = client.kv_put(&key, value.into_bytes()).await;
            report(out, result.map(|index| json!({"index": index})), |v| {
                format!("OK (index {})", v["index"])
            })
        }
        Command::Get { key, read } => kv_get(client, out, &key, read.into()).await,
        Command::Delete { key } => {
            let result = client.kv_delete(&key).await;
            report(out, result.map(|deleted| json!({"deleted": deleted})), |v| {
                if v["deleted"] == true {
                    "deleted".into()
                } else {
                    "not found (nothing deleted)".into()
                }
            })
        }
        Command::Doc(doc) => doc_command(client, out, doc).await,
        Command::Table(table) => table_command(client, out, table).await,
        Command::Health => report(out, client.health().await, |h| pretty(&json_of(h))),
        Command::Incr { key, by } => {
            report(out, client.kv_increment(&key, by).await, |c| format!("{}", c.value))
        }
        Command::Cluster { action: None } => {
            report(out, client.cluster().await, |c| pretty(&json_of(c)))
        }
        Command::Cluster { action: Some(ClusterCommand::Finalize { version }) } => {
            report(out, client.finalize(version.as_deref()).await, |f| match f.index {
                Some(index) => format!(
                    "cluster version {} (was {}), at index {index}",
                    f.cluster_version, f.previous
                ),
                None => format!("cluster version {} already (nothing changed)", f.cluster_version),
            })
        }
        Command::Member(member) => {
            let result = match member {
                MemberCommand::List => client.members().await,
                MemberCommand::Add { id, peer_address, replaces } => {
                    client.add_member(id, &peer_address, replaces).await
                }
                MemberCommand::Remove { id } => client.remove_member(id).await,
            };
            report(out, result, members_text)
        }
        Command::Token(TokenCommand::Create { name, role }) => {
            report(out, client.create_token(&name, role).await, |created| {
                format!(
                    "token {} ({}, role {}):\n{}\nkeep it now: it is not shown again",
                    created.view.id, created.view.name, created.view.role, created.token
                )
            })
        }
        Command::Token(TokenCommand::List) => report(out, client.list_tokens().await, |list| {
            if list.tokens.is_empty() {
                return "no tokens (the node's admin token is not listed)".into();
            }
            let rows: Vec<String> = list
                .tokens
                .iter()
                .map(|t| format!("{}  {:<5}  {}", t.id, t.role.as_str(), t.name))
                .collect();
            rows.join("\n")
        }),
        Command::Token(TokenCommand::Revoke { id }) => {
            report(out, client.revoke_token(&id).await, |revoked| {
                if revoked.revoked {
                    format!("revoked {id}")
                } else {
                    format!("no token {id} (nothing revoked)")
                }
            })
        }
        Command::Backup(BackupArgs {
            command: BackupCommand::Create { name, sink, here }, ..
        }) => {
            let (taker, node) = if here { (client.clone(), None) } else { follower(client).await };
            report(out, taker.create_backup(&name, Some(&sink)).await, |b| {
                let on = node.map(|id| format!(" on node {id} (a follower)")).unwrap_or_default();
                format!(
                    "backup {}{on} at index {} (fingerprint {}): {} bytes in {} files, {} new, \
                     in {} ms\nlocation: {}",
                    b.name,
                    b.applied_index,
                    b.fingerprint,
                    b.bytes,
                    b.files,
                    b.new_bytes,
                    b.duration_ms,
                    b.location
                )
            })
        }
        Command::Backup(BackupArgs { command: BackupCommand::List { sink }, .. }) => {
            report(out, client.list_backups(sink.as_deref()).await, |list| {
                if list.backups.is_empty() {
                    return "no backups".into();
                }
                let rows: Vec<String> = list
                    .backups
                    .iter()
                    .map(|b| {
                        format!(
                            "{}/{}  index {}  {} bytes  {}",
                            b.sink, b.name, b.applied_index, b.bytes, b.location
                        )
                    })
                    .collect();
                rows.join("\n")
            })
        }
        Command::Backup(BackupArgs { command: BackupCommand::Delete { name, sink }, .. }) => {
            report(out, client.delete_backup(&name, Some(&sink)).await, |deleted| {
                if deleted.deleted {
                    format!("deleted {name}")
                } else {
                    format!("no backup {name} (nothing deleted)")
                }
            })
        }
        Command::Node(_)
        | Command::Watch(_)
        | Command::Cert(_)
        | Command::Release(_)
        | Command::Restore(_)
        | Command::Shell
        | Command::Bench(_)
        | Command::Up(_)
        | Command::Down(_)
        | Command::Status(_)
        | Command::Console(_)
        | Command::Apply(_)
        | Command::Agent(_)
        | Command::Cloud(_) => output::usage(out, "this command cannot run here"),
    }
}

/// A client for a reachable follower of `client`'s cluster, and its id; or
/// `client` itself (a single node, no follower in sight, or no cluster view).
async fn follower(client: &Client) -> (Client, Option<u64>) {
    let Ok(cluster) = client.cluster().await else { return (client.clone(), None) };
    let followers = cluster
        .nodes
        .iter()
        .filter(|n| n.reachable && n.role == Some(cairn_client::views::NodeRole::Follower));
    for node in followers {
        if let Some(at) = node.address.as_deref().and_then(|a| client.at(a).ok()) {
            return (at, Some(node.id));
        }
    }
    (client.clone(), None)
}

/// `cairn watch`: follows a feed over every node of the cluster, printing
/// each event on its line until Ctrl-C or an error no node can mend.
pub async fn watch(global: &Global, args: WatchArgs) -> ExitCode {
    use cairn_client::{Changes, FeedEvent, FeedTarget};
    let out = global.output;
    let first = match global.client(&global.addr) {
        Ok(client) => client,
        Err(e) => return output::usage(out, &e),
    };
    // Every node of the cluster, the one asked first: the feed moves on to
    // the others when it fails.
    let mut nodes = vec![first.clone()];
    match first.cluster().await {
        Ok(cluster) => {
            for address in cluster.nodes.iter().filter_map(|n| n.address.as_deref()) {
                if address != first.addr() {
                    match global.client(address) {
                        Ok(client) => nodes.push(client),
                        Err(e) => tracing::debug!(address, error = %e, "a node left out"),
                    }
                }
            }
        }
        Err(e) => return output::failure(out, &e),
    }
    let target = match (args.table, args.kv) {
        (Some(table), _) => FeedTarget::Table { table, id: args.id },
        (None, Some(prefix)) => FeedTarget::Kv { prefix },
        (None, None) => return output::usage(out, "give a TABLE or --kv PREFIX"),
    };
    let mut changes = match Changes::new(nodes, target, args.since, args.include_initial) {
        Ok(changes) => changes,
        Err(e) => return output::usage(out, &e.to_string()),
    };
    loop {
        let event = tokio::select! {
            event = changes.next() => event,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let line = match (&event, out) {
            (Err(e), _) => return output::failure(out, e),
            (Ok(FeedEvent::Change(data) | FeedEvent::Initial(data)), Output::Json) => {
                data.to_string()
            }
            (Ok(FeedEvent::Ready { index }), Output::Json) => {
                json!({"state": "ready", "index": index}).to_string()
            }
            (Ok(FeedEvent::Ready { index }), Output::Text) => format!("ready at index {index}"),
            (Ok(FeedEvent::Change(data) | FeedEvent::Initial(data)), Output::Text) => {
                change_text(data)
            }
        };
        println!("{line}");
    }
}

/// One change as a line of text: what happened, to what, and the value after.
fn change_text(data: &Value) -> String {
    let kind = data["type"].as_str().unwrap_or("?");
    let subject = match (&data["table"], &data["key"]) {
        (Value::String(table), _) => match data["id"].as_str() {
            Some(id) => format!("{table}/{id}"),
            None => table.clone(),
        },
        (_, Value::String(key)) => format!("kv {key}"),
        _ => String::new(),
    };
    let at = match data["cursor"].as_str() {
        Some(cursor) => format!("[{cursor}] "),
        None => String::new(),
    };
    match &data["new_val"] {
        Value::Null => format!("{at}{kind} {subject}"),
        value => format!("{at}{kind} {subject} {value}"),
    }
}

pub async fn kv_get(client: &Client, out: Output, key: &str, read: Read) -> ExitCode {
    match client.kv_get(key, read).await {
        Ok(Some(bytes)) => {
            let value = value_json(key, &bytes);
            output::success(out, &value, || String::from_utf8_lossy(&bytes).into_owned())
        }
        Ok(None) => not_found(out, format!("key '{key}' does not exist"), "key_not_found"),
        Err(e) => output::failure(out, &e),
    }
}

fn not_found(out: Output, message: String, code: &str) -> ExitCode {
    let error =
        cairn_client::Error::Api { status: 404, code: code.into(), message, indeterminate: false };
    output::failure(out, &error)
}

fn report<T: serde::Serialize>(
    out: Output,
    result: Result<T, cairn_client::Error>,
    text: impl FnOnce(&T) -> String,
) -> ExitCode {
    match result {
        Ok(answer) => output::success(out, &json_of(&answer), || text(&answer)),
        Err(e) => output::failure(out, &e),
    }
}

/// An answer as the JSON it came as (a typed answer always encodes).
fn json_of<T: serde::Serialize>(answer: &T) -> Value {
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

/// Parses a JSON argument, or standard input when it is `-`.
fn json_arg(out: Output, arg: &str, what: &str) -> Result<Value, ExitCode> {
    let text = if arg == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            return Err(output::usage(out, &format!("cannot read {what} from stdin: {e}")));
        }
        text
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text)
        .map_err(|e| output::usage(out, &format!("{what} is not valid JSON: {e}")))
}

async fn doc_command(client: &Client, out: Output, command: DocCommand) -> ExitCode {
    match command {
        DocCommand::Insert { table, json, conflict } => {
            let docs = match json_arg(out, &json, "the document") {
                Ok(docs) => docs,
                Err(code) => return code,
            };
            let result = client.insert(&table, &docs, conflict).await;
            report(out, result, |v| {
                let ids: Vec<String> =
                    v["ids"].as_array().into_iter().flatten().map(|id| id.to_string()).collect();
                format!(
                    "inserted {}, replaced {}, updated {} (index {}): {}",
                    v["inserted"],
                    v["replaced"],
                    v["updated"],
                    v["index"],
                    ids.join(", ")
                )
            })
        }
        DocCommand::Get { table, id, read } => match client.get_doc(&table, &id, read.into()).await
        {
            Ok(Some(doc)) => output::success(out, &doc, || pretty(&doc)),
            Ok(None) => not_found(
                out,
                format!("document '{id}' does not exist in table '{table}'"),
                "doc_not_found",
            ),
            Err(e) => output::failure(out, &e),
        },
        DocCommand::Replace { table, id, json } => {
            let doc = match json_arg(out, &json, "the document") {
                Ok(doc) => doc,
                Err(code) => return code,
            };
            report(out, client.replace_doc(&table, &id, &doc).await, |v| {
                let verb = if v["created"] == true { "created" } else { "replaced" };
                format!("{verb} (index {})", v["index"])
            })
        }
        DocCommand::Update { table, id, patch } => {
            let patch = match json_arg(out, &patch, "the patch") {
                Ok(patch) => patch,
                Err(code) => return code,
            };
            report(out, client.update_doc(&table, &id, &patch).await, |v| pretty(&v["doc"]))
        }
        DocCommand::Delete { table, id } => {
            report(out, client.delete_doc(&table, &id).await, |v| {
                if v["deleted"] == true {
                    "deleted".into()
                } else {
                    "not found (nothing deleted)".into()
                }
            })
        }
        DocCommand::List { table, after, limit, all, read } => {
            list_docs(client, out, &table, after, limit, all, read.into()).await
        }
    }
}

async fn list_docs(
    client: &Client,
    out: Output,
    table: &str,
    mut after: Option<String>,
    limit: usize,
    all: bool,
    read: Read,
) -> ExitCode {
    loop {
        let page = match client.list_docs(table, after.as_deref(), limit, read).await {
            Ok(page) => page,
            Err(e) => return output::failure(out, &e),
        };
        for doc in &page.docs {
            // One document per line, in both modes: easy to pipe.
            println!("{doc}");
        }
        match (page.next, all) {
            (Some(next), true) => after = Some(next),
            (Some(next), false) => {
                if out == Output::Text {
                    eprintln!("(more: --after {next}, or --all)");
                }
                return ExitCode::SUCCESS;
            }
            (None, _) => return ExitCode::SUCCESS,
        }
    }
}

async fn table_command(client: &Client, out: Output, command: TableCommand) -> ExitCode {
    match command {
        TableCommand::List => match client.list_tables().await {
            Ok(tables) => output::success(out, &json!({"tables": tables}), || tables.join("\n")),
            Err(e) => output::failure(out, &e),
        },
        TableCommand::Create { table } => report(out, client.create_table(&table).await, |v| {
            let verb = if v["created"] == true { "created" } else { "already exists" };
            format!("{verb} (index {})", v["index"])
        }),
        TableCommand::Drop { table } => report(out, client.drop_table(&table).await, |v| {
            format!("dropped (index {})", v["index"])
        }),
    }
}

/// `configuration 3: 1 at 127.0.0.1:7101, 2 at …`
fn members_text(view: &cairn_client::MembersView) -> String {
    let members: Vec<String> =
        view.members.iter().map(|(id, addr)| format!("{id} at {addr}")).collect();
    format!("configuration {}: {}", view.configuration_id, members.join(", "))
}
