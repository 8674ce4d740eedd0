//! The command line. Every client command takes `--addr` (or `CAIRN_ADDR`) and
//! `--output text|json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The node clients talk to unless told otherwise.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7001";

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version = cairn_util::version(),
    about = "Cairn: a replicated JSON document store that manages itself"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Node to talk to: HOST:PORT, a port on 127.0.0.1, or http://HOST:PORT.
    #[arg(long, global = true, env = "CAIRN_ADDR", default_value = ADDR_DEFAULT)]
    pub addr: String,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// A file holding the bearer token to send (see `cairn token`); the
    /// environment variable CAIRN_TOKEN holds one itself. By default the
    /// admin token of the cluster `cairn up` runs here, when there is one.
    #[arg(long, global = true, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster's CA certificate: nodes are then reached over HTTPS and
    /// must show a certificate of this CA. By default the CA of the cluster
    /// `cairn up` runs here, when there is one.
    #[arg(long, global = true, env = "CAIRN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// Where `cairn up` keeps the cluster's CA certificate.
pub const CA_CERT_DEFAULT: &str = ".cairn/ca/ca.crt";

/// Where `cairn up` keeps the cluster's admin token.
pub const ADMIN_TOKEN_FILE_DEFAULT: &str = ".cairn/admin.token";

impl Global {
    /// The token to send: `CAIRN_TOKEN`, else `--token-file`, else the
    /// admin token of a cluster `cairn up` runs from this directory, else
    /// none (a node run `--insecure`).
    pub fn token(&self) -> Result<Option<String>, String> {
        if let Ok(token) = std::env::var("CAIRN_TOKEN") {
            let token = token.trim();
            if !token.is_empty() {
                return Ok(Some(token.to_string()));
            }
        }
        let (path, given) = match &self.token_file {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(ADMIN_TOKEN_FILE_DEFAULT), false),
        };
        match cairn_util::secret::read(&path) {
            Ok(Some(token)) => Ok(Some(token)),
            Ok(None) if !given => Ok(None),
            Ok(None) => Err(format!("--token-file {}: no such file", path.display())),
            Err(e) => Err(format!("cannot read the token in {}: {e}", path.display())),
        }
    }

    /// The TLS settings that trust the cluster's CA: `--ca-cert`, else the
    /// CA of a cluster `cairn up` runs from this directory, else none
    /// (plain HTTP, for a node on loopback without certificates).
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        let path = match &self.ca_cert {
            Some(path) => path.clone(),
            None => {
                let default = PathBuf::from(CA_CERT_DEFAULT);
                if !default.exists() {
                    return Ok(None);
                }
                default
            }
        };
        cairn_tls::api_client(&path).map(Some).map_err(|e| e.to_string())
    }

    /// A client of the node at `addr`, with this command line's token and
    /// CA.
    pub fn client(&self, addr: &str) -> Result<cairn_client::Client, String> {
        let timeout = std::time::Duration::from_millis(cairn_client::REQUEST_TIMEOUT_MS_DEFAULT);
        let client = cairn_client::Client::with_tls(addr, timeout, self.tls()?)
            .map_err(|e| e.to_string())?;
        Ok(client.with_token(self.token()?))
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a local cluster in the foreground from ./desired_state.jsonc:
    /// the cloud, a first host, and the agents that build the rest.
    Up(UpArgs),
    /// Stop the cluster `cairn up` runs (its data is kept).
    Down(CloudArg),
    /// Show hosts, nodes and the reconciliation state.
    Status(StatusArgs),
    /// Print login links of the web console and the todo app on the node
    /// --addr: one-time codes, good for 15 minutes (needs an admin token).
    Console(ConsoleArgs),
    /// Validate a desired state and submit it to the cloud.
    Apply(ApplyArgs),
    /// Run a host agent (started by the cloud, one per host).
    Agent(AgentArgs),
    /// Run the cloud with the local provider (`cairn up` runs it for you).
    Cloud(CloudArgs),
    /// Run a data node.
    Node(NodeArgs),
    /// Make the cluster's certificates (CA, then one per node).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Pack this binary as a release artifact, cairn-<version>-<target>.tar.gz,
    /// and list it in the directory's SHA256SUMS (what `artifacts` points to).
    Release(ReleaseArgs),
    /// Make a new data directory from a backup: a single node at the
    /// backup's index, which `cairn node --data-dir` runs and `cairn member
    /// add` grows into a cluster. Every file's checksum and the state's
    /// fingerprint are checked before anything is written.
    Restore(RestoreArgs),
    /// Store VALUE under KEY in the key-value space.
    Put { key: String, value: String },
    /// Print the value under KEY.
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ReadArg::Linearizable)]
        read: ReadArg,
    },
    /// Delete KEY.
    Delete { key: String },
    /// Add BY (default 1; negative subtracts) to the counter under KEY,
    /// and print its new value. Needs cluster version 0.2.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Work with documents.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Work with tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Show this node's health.
    Health,
    /// Show the cluster as this node sees it; `cairn cluster finalize`
    /// finalizes an upgrade.
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterCommand>,
    },
    /// Change the cluster's members (a membership change on a live cluster).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Make, list and revoke clients' tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Take, list and delete backups of the node --addr (needs an admin
    /// token, and a node started with --backup-dir); with --via-cloud,
    /// through the cloud's desired state (its `backups`), as the control
    /// plane takes them.
    Backup(BackupArgs),
    /// Print a table's changes (or the key-value space's) as they happen,
    /// one line each; moves to another node of the cluster when this one
    /// goes away, and resumes with nothing lost. Ctrl-C stops.
    Watch(WatchArgs),
    /// An interactive prompt: `put a 1`, `get a`, `get a 7002`, `help`.
    Shell,
    /// Measure throughput and latency under concurrent load.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The table to watch.
    #[arg(required_unless_present = "kv", conflicts_with = "kv")]
    pub table: Option<String>,
    /// Watch the key-value space's keys that start with PREFIX instead
    /// ("" for every key).
    #[arg(long, value_name = "PREFIX")]
    pub kv: Option<String>,
    /// Only this document.
    #[arg(long, conflicts_with = "kv")]
    pub id: Option<String>,
    /// Resume after this cursor (an event's "cursor").
    #[arg(long, conflicts_with = "include_initial")]
    pub since: Option<String>,
    /// First print the table's documents, then "ready", then changes.
    #[arg(long, conflicts_with = "kv")]
    pub include_initial: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReleaseArgs {
    /// The directory the artifact and SHA256SUMS go to (made if missing).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup: `<backup directory>/<name>` (the `location` that
    /// `cairn backup create` and `list` print).
    #[arg(long)]
    pub from: PathBuf,
    /// The new data directory (it must not exist, or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's id (a small positive number).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Where the node keeps its data (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = ADDR_DEFAULT)]
    pub listen: SocketAddr,
    /// Where clients reach the API, when that is not --listen: HOST:PORT (a
    /// port a container publishes, say). Peers learn it, and `/v1/cluster`
    /// lists it.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// Zone label reported by /v1/cluster.
    #[arg(long)]
    pub zone: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = cairn_server::node::MAX_BODY_BYTES_DEFAULT)]
    pub max_body_bytes: usize,
    /// HTTP connections served at once; more wait until one closes.
    #[arg(long, default_value_t = cairn_server::http::MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// How long a write may wait for its answer, in milliseconds.
    #[arg(long, default_value_t = cairn_server::node::WRITE_TIMEOUT_MS_DEFAULT)]
    pub write_timeout_ms: u64,
    /// Address to listen on for peers (replication); defaults to this node's
    /// address in --peers.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Every member's peer address, this node's included:
    /// `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. The initial configuration when
    /// the data directory is empty; leave out to run a single node.
    #[arg(long, value_parser = parse_peers, default_value = "")]
    pub peers: Peers,
    /// The replica's tick, in milliseconds.
    #[arg(long, default_value_t = cairn_server::node::TICK_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tick_ms: u64,
    /// One round of leader election, in milliseconds (a dead leader is
    /// replaced after about two).
    #[arg(long, default_value_t = cairn_server::node::ELECTION_TIMEOUT_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(20..=60_000))]
    pub election_timeout_ms: u64,
    /// Log entries kept behind the applied index, so that a peer lagging by
    /// fewer catches up from the log rather than from a snapshot.
    #[arg(long, default_value_t = cairn_server::node::LOG_RETAIN_ENTRIES_DEFAULT)]
    pub log_retain_entries: u64,
    /// Change history kept for changefeeds to resume from, in log entries:
    /// at least the changes of this many of the last entries (0 keeps none).
    #[arg(long, default_value_t = cairn_storage::changes::WINDOW_ENTRIES_DEFAULT)]
    pub changes_window_entries: u64,
    /// Change history kept, in bytes: the oldest entries' changes are
    /// trimmed beyond this, even within --changes-window-entries.
    #[arg(long, default_value_t = cairn_storage::changes::WINDOW_BYTES_DEFAULT)]
    pub changes_window_bytes: u64,
    /// Changefeeds this node serves at once; one more gets 503. At most
    /// --max-connections minus one, so that other requests still get through.
    #[arg(long, default_value_t = cairn_server::node::FEEDS_MAX_DEFAULT)]
    pub feeds_max: usize,
    /// Where `cairn backup create` keeps this node's backups (made if
    /// absent); without it, backups are refused.
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// On an empty data directory: join the running cluster that this HTTP
    /// address (any member) belongs to; needs --peer-listen.
    #[arg(long, conflicts_with = "peers")]
    pub join: Option<String>,
    /// A host name this node answers to in the Host header, beyond IP
    /// addresses and localhost (repeat for more). Other names are refused,
    /// so that no web page can reach the node through a user's browser by
    /// pointing its own name at it (DNS rebinding).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Where this node's certificates are (`ca.crt`, `node-<id>.crt`,
    /// `node-<id>.key`, made by `cairn cert`): peers then authenticate each
    /// other with mutual TLS. A node that replicates needs this or
    /// --insecure.
    #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
    pub certs_dir: Option<PathBuf>,
    /// Let peers talk plain TCP with no authentication, and clients in
    /// with no token: anyone who reaches a port can pose as a member or
    /// change anything. For tests and development.
    #[arg(long)]
    pub insecure: bool,
    /// The node's admin token: made there when missing (readable by its
    /// owner only). Defaults to `admin.token` in the data directory. The
    /// nodes of a cluster share one, so that a joining node may join.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make the cluster's certificate authority: `ca.crt` (every node needs
    /// it) and `ca.key` (keep it where certificates are issued).
    CreateCa {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
    },
    /// Issue node ID its certificate and key (`node-ID.crt`, `node-ID.key`),
    /// signed by the CA; issuing again replaces them (rotation).
    CreateNode {
        /// The node's id.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// Where to write them (created if missing; gets a copy of ca.crt).
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
        /// Where the CA is (`ca.crt`, `ca.key`); the certs dir by default.
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// A host name or IP address clients reach the node by (repeat for
        /// more; `localhost` and `127.0.0.1` when none is given).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Make what a cluster lacks, in one go: the CA in DIR/ca, then for each
    /// --node a directory DIR/node-ID with its certificate, key and ca.crt.
    /// What exists is kept, so running it again changes nothing (container
    /// set-ups run it at every start).
    Init {
        /// Where to keep them (created if missing).
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
        /// A node and the names clients reach it by: `ID=NAME[,NAME...]`
        /// (`localhost` and `127.0.0.1` are always named). Repeat per node.
        #[arg(long = "node", value_name = "ID=NAMES", value_parser = parse_node_names, required = true)]
        nodes: Vec<(u64, Vec<String>)>,
    },
}

/// `HOST:PORT`, for `cairn node --advertise`: a host name or an IP address
/// (IPv6 in brackets) and a port.
fn parse_advertise(text: &str) -> Result<String, String> {
    let bad = || format!("`{text}` is not HOST:PORT");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().ok().filter(|port| *port > 0).ok_or_else(bad)?;
    let host_ok = if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        ip.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    };
    if host_ok {
        Ok(text.to_string())
    } else {
        Err(bad())
    }
}

/// `ID=NAME[,NAME...]`, for `cairn cert init --node`.
fn parse_node_names(text: &str) -> Result<(u64, Vec<String>), String> {
    let (id, names) =
        text.split_once('=').ok_or_else(|| format!("`{text}` is not ID=NAME[,NAME...]"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("`{id}` is not a node id (a positive integer)"))?;
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for name in names.split(',').map(str::trim) {
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(format!("`{name}` is not a host name or an IP address"));
        }
        if !all.iter().any(|known| known == name) {
            all.push(name.to_string());
        }
    }
    Ok((id, all))
}

/// Where the cloud listens, by default.
pub const CLOUD_DEFAULT: &str = "127.0.0.1:7000";

#[derive(Args, Debug, Clone)]
pub struct CloudArg {
    /// The cloud's address (`cairn up` listens on 127.0.0.1:7000).
    #[arg(long, env = "CAIRN_CLOUD", default_value = CLOUD_DEFAULT)]
    pub cloud: String,
    /// The file holding the cloud's admin token (`cairn up` makes it in its
    /// directory).
    #[arg(long, env = "CAIRN_CLOUD_TOKEN_FILE", default_value = ".cairn/cloud.token")]
    pub cloud_token_file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// The desired state to start from.
    #[arg(short = 'f', long = "file", default_value = "desired_state.jsonc")]
    pub file: PathBuf,
    /// Where the cluster's hosts keep their data.
    #[arg(long, default_value = ".cairn")]
    pub dir: PathBuf,
    /// The cloud's address; hosts take the ports after it (host 1's API on
    /// the next one).
    #[arg(long, default_value = CLOUD_DEFAULT)]
    pub listen: SocketAddr,
    /// Let the cloud's API (plain HTTP) listen beyond loopback: its admin
    /// token then crosses the network in the clear.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cloud: CloudArg,
    /// Print again every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub cloud: CloudArg,
    /// Leave the cloud out (a cluster run by hand): the console then shows
    /// the desired state but cannot submit one.
    #[arg(long)]
    pub no_cloud: bool,
    /// The address a browser reaches the node by, when it is not --addr
    /// (a port a container publishes, say): `https://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub cloud: CloudArg,
    /// The desired state file (JSON with comments).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// This host's name.
    #[arg(long)]
    pub host: String,
    /// This host's zone.
    #[arg(long)]
    pub zone: String,
    /// The host's directory (intent, node data, logs).
    #[arg(long)]
    pub dir: PathBuf,
    /// The agent's gRPC address.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The node's HTTP API address.
    #[arg(long)]
    pub node_listen: SocketAddr,
    /// The node's peer (replication) address.
    #[arg(long)]
    pub node_peer_listen: SocketAddr,
    /// The cloud's URL; without it the agent only supervises its node.
    #[arg(long)]
    pub cloud: Option<String>,
    /// The cluster's CA (`ca.crt`, `ca.key`): the agent issues its node a
    /// certificate, and the node's peers talk mutual TLS.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// The file holding the cloud's admin token (the cloud passes it).
    #[arg(long, value_name = "FILE")]
    pub cloud_token_file: Option<PathBuf>,
    /// With --ca-dir: the cluster's admin token, given to the node and sent
    /// to it (default: `admin.token` in --dir, made when missing).
    #[arg(long, value_name = "FILE")]
    pub node_token_file: Option<PathBuf>,
    /// Passed to the node: where its backups go (`cairn up` gives every
    /// node the cluster's `backups` directory).
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CloudArgs {
    /// Where hosts are created (one directory each) and the inventory kept.
    #[arg(long, default_value = ".cairn")]
    pub dir: PathBuf,
    /// The cloud's HTTP address.
    #[arg(long, default_value = CLOUD_DEFAULT)]
    pub listen: SocketAddr,
    /// The desired state file to serve (watched for changes).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Host N's ports are BASE+10(N-1)+1 (API), +2 (peers), +3 (agent).
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Let the API (plain HTTP) listen beyond loopback: its admin token then
    /// crosses the network in the clear.
    #[arg(long)]
    pub insecure: bool,
}

/// Peer addresses by node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, SocketAddr>);

/// Parses `1=HOST:PORT,2=HOST:PORT`; names what is wrong.
pub fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not ID=HOST:PORT (e.g. 1=127.0.0.1:7101)"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| (1..=cairn_consensus::replica::NODE_ID_MAX).contains(id))
            .ok_or_else(|| {
                format!(
                    "'{id}' in '{part}' is not a node id (1 to {})",
                    cairn_consensus::replica::NODE_ID_MAX
                )
            })?;
        let addr = resolve(addr.trim()).map_err(|e| format!("'{part}': {e}"))?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    Ok(Peers(peers))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{addr}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{addr}' resolves to no address"))
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Finalize an upgrade: raise the cluster version, which turns on the
    /// new release's changes to the log and the disk. Every member must run
    /// a release that runs it; a downgrade below it is impossible after.
    Finalize {
        /// The cluster version (MAJOR.MINOR); by default the highest that
        /// every member runs.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members of the current configuration.
    List,
    /// Add node ID, which peers reach at PEER_ADDRESS (start it first, with an
    /// empty data directory; `cairn node --join` starts and adds in one go).
    Add {
        id: u64,
        peer_address: String,
        /// Replace this member in the same change.
        #[arg(long)]
        replaces: Option<u64>,
    },
    /// Remove node ID from the cluster.
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token with a role; it is printed this once (the cluster
    /// keeps only its hash).
    Create {
        /// What the token is for (shown by `list`).
        #[arg(long)]
        name: String,
        /// read, write (reads too) or admin.
        #[arg(long)]
        role: cairn_client::views::Role,
    },
    /// List the tokens: id, name, role; never a secret.
    List,
    /// Revoke the token ID (the part of the token before the `.`).
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Go through the cloud: add the backup to the desired state's
    /// `backups` (or remove it), submit it, and wait for the control plane
    /// to take (or delete) it; `list` shows what the control plane keeps.
    #[arg(long, global = true)]
    pub via_cloud: bool,
    /// The cloud's address, with --via-cloud.
    #[arg(long, global = true, env = "CAIRN_CLOUD", default_value = CLOUD_DEFAULT)]
    pub cloud: String,
    /// The file holding the cloud's admin token, with --via-cloud.
    #[arg(
        long,
        global = true,
        env = "CAIRN_CLOUD_TOKEN_FILE",
        default_value = ".cairn/cloud.token"
    )]
    pub cloud_token_file: PathBuf,
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take backup NAME of the cluster's state, holding every write
    /// acknowledged before; prints its index, fingerprint and sizes. It is
    /// taken on a follower of --addr's cluster when one is reachable, to
    /// spare the leader, and on --addr's node otherwise.
    Create {
        name: String,
        /// The sink: a directory under the node's backup root (--backup-dir),
        /// named as a backup is.
        #[arg(long, default_value = "default")]
        sink: String,
        /// Take it on --addr's node, whatever its role.
        #[arg(long)]
        here: bool,
    },
    /// List the node's backups: of one sink, or of every sink.
    List {
        #[arg(long)]
        sink: Option<String>,
    },
    /// Delete backup NAME, and the files no other backup of its sink shares.
    Delete {
        name: String,
        #[arg(long, default_value = "default")]
        sink: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadArg {
    Linearizable,
    Local,
}

impl From<ReadArg> for cairn_client::Read {
    fn from(read: ReadArg) -> cairn_client::Read {
        match read {
            ReadArg::Linearizable => cairn_client::Read::Linearizable,
            ReadArg::Local => cairn_client::Read::Local,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DocCommand {
    /// Insert a document (a JSON object) or many (an array); `-` reads stdin.
    Insert {
        table: String,
        json: String,
        /// error, replace or update: what happens when an id exists.
        #[arg(long, default_value_t = cairn_client::Conflict::Error)]
        conflict: cairn_client::Conflict,
    },
    /// Print one document.
    Get {
        table: String,
        id: String,
        #[arg(long, value_enum, default_value_t = ReadArg::Linearizable)]
        read: ReadArg,
    },
    /// Replace (or create) a document; `-` reads stdin.
    Replace { table: String, id: String, json: String },
    /// Apply a JSON merge patch to a document; `-` reads stdin.
    Update { table: String, id: String, patch: String },
    /// Delete a document.
    Delete { table: String, id: String },
    /// List documents in id order.
    List {
        table: String,
        /// Start after this id.
        #[arg(long)]
        after: Option<String>,
        /// Documents per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Follow the cursor to the end of the table.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = ReadArg::Linearizable)]
        read: ReadArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum TableCommand {
    /// List tables.
    List,
    /// Create a table (nothing happens if it exists).
    Create { table: String },
    /// Drop a table and every document in it.
    Drop { table: String },
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Nodes to spread clients over, comma-separated (defaults to --addr).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Share of operations that are reads, from 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Keys the workload touches (`bench/0` … `bench/N-1`).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Stop after this many operations (default: 10000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    pub ops: Option<u64>,
    /// Stop after this long (`10s`, `1m`).
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Read consistency for reads.
    #[arg(long, value_enum, default_value_t = ReadArg::Linearizable)]
    pub read: ReadArg,
    /// Write every key once before measuring, so reads find values.
    #[arg(long)]
    pub prefill: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// Seed for the operation mix and key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The system under test: Cairn's HTTP API, or etcd's gRPC API (then
    /// --targets are etcd client URLs, e.g. http://127.0.0.1:2379), for
    /// side-by-side runs from one load generator (a build with the feature
    /// `etcd`).
    #[arg(long, value_enum, default_value_t = SystemArg::Cairn)]
    pub system: SystemArg,
    /// Run --kill-cmd this long after the start, and report how long after it
    /// the first write sent after it was acknowledged (failover time).
    #[arg(long, requires = "kill_cmd")]
    pub kill_after: Option<humantime::Duration>,
    /// A shell command that kills a node (e.g. `kill -9 PID`); see --kill-after.
    #[arg(long, requires = "kill_after")]
    pub kill_cmd: Option<String>,
    /// Open this many changefeeds of the written keys (spread over the
    /// targets) before the run, and report the write-to-event latency (from
    /// a write's send to its event on a feed), then how fast one feed reads
    /// the run's changes back from the history (Cairn only).
    #[arg(long, default_value_t = 0)]
    pub feeds: usize,
    /// Nodes to open the --feeds on, comma-separated (defaults to
    /// --targets): feeds on other nodes than the writers' give the
    /// write-to-event latency between them (across zones, say).
    #[arg(long, value_delimiter = ',')]
    pub feed_targets: Vec<String>,
    /// Give up on a request after this many milliseconds (it counts as an
    /// error); without it a request waits as long as the client library
    /// does (30 s for Cairn, no limit for etcd).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: Option<u64>,
    /// A client whose request failed sends its next one to the next of
    /// --targets, as a client that knows every node would (for runs under
    /// faults: see bench/partial-connectivity).
    #[arg(long)]
    pub rotate: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemArg {
    Cairn,
    Etcd,
}
