//! The desired state: what the operator asks the cluster to be, parsed from
//! `desired_state.jsonc` (JSON with `//` and `/* */` comments and trailing
//! commas) and validated strictly.
//!
//! A document goes through three stages, each refusing with a [`DesiredError`]
//! that names the field at fault by its path (`zones[1]`,
//! `backups[0].sink`, `backup_schedule.every`), or `document` for the text as a
//! whole:
//!
//! 1. **Reading** ([`parse`]): the text is bounded in size and nesting, parsed
//!    as JSONC, and turned into a JSON value. A syntax error names its line and
//!    column. Two leniencies of the parser are closed: a missing comma
//!    between values is refused, and so is a key given twice in one object
//!    (JSON parsers keep the last one silently, which would hide a mistake).
//! 2. **Shape**: the value is walked by hand. Unknown fields are refused with
//!    the list of known ones, wrong JSON types say what was expected and what
//!    was found, absent fields take their defaults (`null` is taken as
//!    absent only for the fields without one: `artifacts`, `backup_schedule`,
//!    `restore_from`). Integers must be non-negative and fit `u64` (`3.5`,
//!    `-1` and `"3"` are refused).
//! 3. **Values** ([`validate`]): ranges, character sets, uniqueness and the
//!    bound of `restart_generation` by `id`. This stage works on a
//!    [`DesiredState`], so states built in code (tests, generators) are held to
//!    the same rules as states read from a file.
//!
//! A new state is then checked against the accepted one by
//! [`check_transition`]: ids only go up, `restart_generation` never goes down,
//! and `restore_from` is only for a cluster that never ran.
//!
//! Invariants:
//! - [`parse`] never panics, whatever the bytes; it returns the first fault
//!   found, in a fixed order (so the same text always gives the same error).
//! - Nothing of a refused state is returned: a state is whole or absent.
//! - `parse(&state.to_jsonc())` is `Ok(state)` exactly when
//!   `validate(&state)` is `Ok`, and otherwise fails with the same error.
//!
//! Not done here: no IO (the cloud reads the file and hands over its text), no
//! comparison with the observed cluster, and no feasibility check (whether
//! there are hosts enough, whether a version's binaries exist): those belong to
//! the planner and its effects. [`DesiredState::to_jsonc`] writes plain JSON;
//! the operator's comments are not kept.

use jsonc_parser::tokens::{Token, TokenAndRange};
use jsonc_parser::{ast, CollectOptions, CommentCollectionStrategy, ParseOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};

/// The replica counts a cluster may have (2f+1 for f = 0..=3).
pub const REPLICAS_ALLOWED: [u32; 4] = [1, 3, 5, 7];
/// The default of `replicas`.
pub const REPLICAS_DEFAULT: u32 = 3;
/// The default of `zones`: one zone.
pub const ZONE_DEFAULT: &str = "zone-a";
/// At most this many zones (one per replica of the largest cluster).
pub const ZONES_MAX: usize = 7;
/// The default of `host_type`.
pub const HOST_TYPE_DEFAULT: &str = "small";
/// The default of `max_attempts`.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// The largest `max_attempts`.
pub const MAX_ATTEMPTS_MAX: u32 = 100;
/// At most this many on-demand backups listed at once.
pub const BACKUPS_MAX: usize = 1_000;
/// The shortest period of scheduled backups.
pub const BACKUP_EVERY_S_MIN: u64 = 60;
/// The longest period of scheduled backups (a leap year).
pub const BACKUP_EVERY_S_MAX: u64 = 366 * 86_400;
/// The most scheduled backups kept.
pub const BACKUP_KEEP_MAX: u32 = 1_000;
/// Longest name (zone, backup, host type), in characters: a DNS label.
pub const NAME_CHARS_MAX: usize = 63;
/// Longest `version`, in characters.
pub const VERSION_CHARS_MAX: usize = 64;
/// Longest free text (a path or URL: `artifacts`, a sink, `restore_from`).
pub const TEXT_BYTES_MAX: usize = 4_096;
/// Largest desired-state document.
pub const DOCUMENT_BYTES_MAX: usize = 1 << 20;
/// Deepest nesting of arrays and objects in a document. The schema needs 3;
/// the bound keeps the recursive parser far from the end of the stack.
pub const DOCUMENT_DEPTH_MAX: usize = 32;

/// The fields of the top-level object, in the order of the example file.
pub const FIELDS: [&str; 13] = [
    "id",
    "running",
    "version",
    "artifacts",
    "restart_generation",
    "replicas",
    "zones",
    "host_type",
    "allow_temporary_hosts",
    "backups",
    "backup_schedule",
    "restore_from",
    "max_attempts",
];
/// Scheduled backups are named this and their time slot
/// (`scheduled-20261206-180000`); on-demand names may not start so.
pub const SCHEDULED_PREFIX: &str = "scheduled-";
/// The fields of one entry of `backups`.
pub const BACKUP_FIELDS: [&str; 2] = ["name", "sink"];
/// The fields of `backup_schedule`.
pub const BACKUP_SCHEDULE_FIELDS: [&str; 3] = ["every", "keep", "sink"];

/// The units of a duration such as `"15m"`, with their length in seconds,
/// largest first (the order [`DesiredState::to_jsonc`] tries them in).
const DURATION_UNITS_S: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// What the operator wants the cluster to be. See the repository's
/// `desired_state.jsonc` for every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Raised for every change; a state whose id is not above the accepted one
    /// is refused.
    pub id: u64,
    /// `false` stops every node, keeping its data; `true` runs them.
    pub running: bool,
    /// The software version every node runs.
    pub version: String,
    /// Where `cairn-<version>` binaries and `SHA256SUMS` are found (a directory
    /// or a URL); `None` when only this build's version is used.
    pub artifacts: Option<String>,
    /// Raise to restart every node, one at a time. Never above `id`.
    pub restart_generation: u64,
    /// How many nodes hold the data: 1, 3, 5 or 7.
    pub replicas: u32,
    /// Zones the replicas spread over, evenly.
    pub zones: Vec<String>,
    /// The kind of host asked of the cloud.
    pub host_type: String,
    /// Whether a step may create a host beyond `replicas` for a while (to
    /// replace one before removing the other).
    pub allow_temporary_hosts: bool,
    /// On-demand backups: an entry added is taken, an entry removed is deleted.
    pub backups: Vec<Backup>,
    /// Periodic backups.
    pub backup_schedule: Option<BackupSchedule>,
    /// A backup to start a new cluster from (only for a cluster that never ran).
    pub restore_from: Option<String>,
    /// Failed tries of one step before the reconciler stops in `ERROR_STATE`.
    pub max_attempts: u32,
}

/// One on-demand backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Names the backup; unique within `backups`.
    pub name: String,
    /// Where it is written: a directory under the cluster's backup root, by
    /// name.
    pub sink: String,
}

/// Periodic backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSchedule {
    /// How often, in seconds.
    pub every_s: u64,
    /// How many to keep.
    pub keep: u32,
    /// Where they are written, as [`Backup::sink`].
    pub sink: String,
}

/// A refused desired state: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DesiredError {
    /// The field at fault by its path (`id`, `zones[2]`,
    /// `backup_schedule.every`), or `document` for the text as a whole.
    pub field: String,
    /// What is wrong with it, for the operator.
    pub message: String,
}

impl DesiredError {
    /// An error about `field` (a path, or `document`).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        DesiredError { field: field.into(), message: message.into() }
    }
}

impl DesiredState {
    /// The state every absent field defaults to, under the given id.
    pub fn default_with_id(id: u64) -> DesiredState {
        DesiredState {
            id,
            running: true,
            version: cairn_util::version().to_string(),
            artifacts: None,
            restart_generation: 0,
            replicas: REPLICAS_DEFAULT,
            zones: vec![ZONE_DEFAULT.to_string()],
            host_type: HOST_TYPE_DEFAULT.to_string(),
            allow_temporary_hosts: false,
            backups: Vec::new(),
            backup_schedule: None,
            restore_from: None,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
        }
    }

    /// The state as a document [`parse`] reads back: every field written,
    /// `None` fields left out, the schedule's period in its largest whole
    /// unit. Plain, indented JSON (comments are not kept).
    pub fn to_jsonc(&self) -> String {
        let backups: Vec<Value> =
            self.backups.iter().map(|b| json!({ "name": b.name, "sink": b.sink })).collect();
        let schedule = self.backup_schedule.as_ref().map(
            |s| json!({ "every": format_duration(s.every_s), "keep": s.keep, "sink": s.sink }),
        );
        let mut top = json!({
            "id": self.id,
            "running": self.running,
            "version": self.version,
            "artifacts": self.artifacts,
            "restart_generation": self.restart_generation,
            "replicas": self.replicas,
            "zones": self.zones,
            "host_type": self.host_type,
            "allow_temporary_hosts": self.allow_temporary_hosts,
            "backups": backups,
            "backup_schedule": schedule,
            "restore_from": self.restore_from,
            "max_attempts": self.max_attempts,
        });
        // `None` is left out rather than written as null; no other field is null.
        if let Value::Object(fields) = &mut top {
            fields.retain(|_, value| !value.is_null());
        }
        // `{:#}` is the indented form, one field a line.
        format!("{top:#}\n")
    }
}

/// Parses and validates a desired state on its own (not against the accepted
/// one: see [`check_transition`]).
pub fn parse(text: &str) -> Result<DesiredState, DesiredError> {
    let value = read_document(text)?;
    let state = shape(&value)?;
    validate(&state)?;
    Ok(state)
}

/// Checks a new desired state against the accepted one: its id must be above,
/// `restart_generation` may not go down, and `restore_from` is only for a
/// cluster that never ran (carrying the accepted state's `restore_from` over
/// unchanged is allowed: it asks for nothing new).
pub fn check_transition(
    accepted: Option<&DesiredState>,
    cluster_has_run: bool,
    new: &DesiredState,
) -> Result<(), DesiredError> {
    if let Some(accepted) = accepted {
        if new.id <= accepted.id {
            return Err(DesiredError::new(
                "id",
                format!("{} is not above the accepted id {}", new.id, accepted.id),
            ));
        }
        if new.restart_generation < accepted.restart_generation {
            return Err(DesiredError::new(
                "restart_generation",
                format!(
                    "{} is below the accepted restart_generation {}; it may only stay or go up",
                    new.restart_generation, accepted.restart_generation
                ),
            ));
        }
    }
    if let (true, Some(restore_from)) = (cluster_has_run, &new.restore_from) {
        let carried_over = accepted.and_then(|a| a.restore_from.as_ref()) == Some(restore_from);
        if !carried_over {
            return Err(DesiredError::new(
                "restore_from",
                "only a cluster that never ran can restore; this one has run (remove the field)",
            ));
        }
    }
    Ok(())
}

/// Refuses a state that asks for what this build's control plane does not do
/// yet, naming the field: a field is either acted on or refused, never
/// accepted and ignored. Valid states only; [`parse`] does not call it, so
/// that the rules of these fields stay checked (and tested) on their own. The
/// cloud calls it before it accepts a state, and so does reconciliation before
/// it adopts one.
///
/// Every field of this version is acted on, so it accepts every valid
/// state; it stays the one place a field not acted on yet is refused.
pub fn check_supported(_state: &DesiredState) -> Result<(), DesiredError> {
    Ok(())
}

/// Checks every value rule of a state: ranges, character sets, uniqueness,
/// `restart_generation` not above `id`. [`parse`] calls it; code that builds
/// states itself calls it too.
pub fn validate(state: &DesiredState) -> Result<(), DesiredError> {
    if state.id == 0 {
        return Err(DesiredError::new("id", "must be at least 1, got 0"));
    }
    check_version(&state.version)?;
    if let Some(artifacts) = &state.artifacts {
        check_text(artifacts, "artifacts")?;
        check_location(artifacts, "artifacts")?;
    }
    if state.restart_generation > state.id {
        return Err(DesiredError::new(
            "restart_generation",
            format!(
                "{} is above id {}; raise id with it (restart_generation may be at most id)",
                state.restart_generation, state.id
            ),
        ));
    }
    if !REPLICAS_ALLOWED.contains(&state.replicas) {
        return Err(DesiredError::new(
            "replicas",
            format!("must be one of 1, 3, 5, 7, got {}", state.replicas),
        ));
    }
    check_zones(&state.zones)?;
    check_name(&state.host_type, "host_type", &['.', '-', '_'])?;
    check_backups(&state.backups)?;
    if let Some(schedule) = &state.backup_schedule {
        check_schedule(schedule)?;
    }
    if let Some(restore_from) = &state.restore_from {
        check_text(restore_from, "restore_from")?;
        // Every agent reads it from its own directory: only an absolute
        // path names the same backup on all of them.
        if !restore_from.starts_with('/') {
            return Err(DesiredError::new(
                "restore_from",
                format!(
                    "must be a backup's directory as an absolute path (<backup root>/<sink>/<name>, \
                     the location `cairn backup list` shows), got {}",
                    quoted(restore_from)
                ),
            ));
        }
    }
    check_range(u64::from(state.max_attempts), "max_attempts", 1, u64::from(MAX_ATTEMPTS_MAX))?;
    Ok(())
}

// ---- Stage 1: reading the text ----

/// The document's JSON value: bounded, parsed as JSONC, with duplicate keys and
/// unrepresentable numbers refused.
fn read_document(text: &str) -> Result<Value, DesiredError> {
    if text.len() > DOCUMENT_BYTES_MAX {
        return Err(DesiredError::new(
            "document",
            format!("is {} bytes, above the limit of {DOCUMENT_BYTES_MAX}", text.len()),
        ));
    }
    if nests_deeper_than(text, DOCUMENT_DEPTH_MAX) {
        return Err(DesiredError::new(
            "document",
            format!("nests arrays and objects deeper than {DOCUMENT_DEPTH_MAX} levels"),
        ));
    }
    let options = ParseOptions {
        allow_comments: true,
        allow_loose_object_property_names: false,
        allow_trailing_commas: true,
    };
    let collect = CollectOptions { comments: CommentCollectionStrategy::Off, tokens: true };
    let parsed = jsonc_parser::parse_to_ast(text, &collect, &options).map_err(|e| {
        DesiredError::new(
            "document",
            format!("line {}:{}: {}", e.line_display(), e.column_display(), e.kind()),
        )
    })?;
    if let Some(offset) = missing_comma(parsed.tokens.as_deref().unwrap_or_default()) {
        let (line, column) = line_column(text, offset);
        let message = format!("line {line}:{column}: expected a comma before this value");
        return Err(DesiredError::new("document", message));
    }
    match parsed.value {
        Some(value) => to_json(value, ""),
        None => Err(DesiredError::new("document", "is empty; expected an object")),
    }
}

/// Whether arrays and objects nest deeper than `depth_max`, counting brackets
/// outside strings and comments. Exact for valid JSONC; on broken text it may
/// count wrong, which only decides which error is reported.
fn nests_deeper_than(text: &str, depth_max: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' | b'\'' => {
                i += 1;
                while let Some(&inner) = bytes.get(i) {
                    if inner == byte {
                        break;
                    }
                    // An escape hides the next byte, which may be the quote.
                    i += if inner == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&b| b != b'\n') {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while bytes.get(i).is_some() && bytes.get(i..i + 2) != Some(b"*/".as_slice()) {
                    i += 1;
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Where a comma is missing between two values or two properties, as a byte
/// offset. The parser takes `[1 2]` and `{"a": 1 "b": 2}` as if the commas
/// were there; JSON does not, and the operator most likely lost a line.
fn missing_comma(tokens: &[TokenAndRange<'_>]) -> Option<usize> {
    let mut previous_ends_value = false;
    for TokenAndRange { token, range } in tokens {
        let (starts_value, ends_value) = match token {
            Token::String(_) | Token::Number(_) | Token::Boolean(_) | Token::Null => (true, true),
            Token::Word(_) => (true, true),
            Token::OpenBrace | Token::OpenBracket => (true, false),
            Token::CloseBrace | Token::CloseBracket => (false, true),
            Token::Comma | Token::Colon => (false, false),
            Token::CommentLine(_) | Token::CommentBlock(_) => continue,
        };
        if previous_ends_value && starts_value {
            return Some(range.start);
        }
        previous_ends_value = ends_value;
    }
    None
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
    (line, column)
}

/// Converts a parsed value to JSON, refusing a key given twice in one object
/// and a number JSON cannot hold. Recursion is bounded by
/// [`DOCUMENT_DEPTH_MAX`], checked before parsing.
fn to_json(value: ast::Value<'_>, path: &str) -> Result<Value, DesiredError> {
    Ok(match value {
        ast::Value::StringLit(s) => Value::String(s.value.into_owned()),
        ast::Value::NumberLit(n) => match n.value.parse::<Number>() {
            Ok(number) => Value::Number(number),
            Err(_) => {
                let message = format!("number {} is out of range", n.value);
                return Err(DesiredError::new(field_or_document(path), message));
            }
        },
        ast::Value::BooleanLit(b) => Value::Bool(b.value),
        ast::Value::NullKeyword(_) => Value::Null,
        ast::Value::Array(array) => {
            let mut items = Vec::with_capacity(array.elements.len());
            for (index, element) in array.elements.into_iter().enumerate() {
                items.push(to_json(element, &format!("{path}[{index}]"))?);
            }
            Value::Array(items)
        }
        ast::Value::Object(object) => {
            let mut map = Map::new();
            for property in object.properties {
                let key = property.name.into_string();
                let key_path = join(path, &key);
                if map.contains_key(&key) {
                    return Err(DesiredError::new(key_path, "is given twice in the same object"));
                }
                let value = to_json(property.value, &key_path)?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
    })
}

// ---- Stage 2: shape (JSON types, unknown fields, defaults) ----

/// The state a document's value describes, defaults filled in, before the
/// value rules of [`validate`].
fn shape(value: &Value) -> Result<DesiredState, DesiredError> {
    let top = Fields::new(value, "", &FIELDS)?;
    let id = match top.get("id") {
        Some((value, path)) => uint(value, &path)?,
        None => return Err(DesiredError::new("id", "is required (raise it for every change)")),
    };
    let mut state = DesiredState::default_with_id(id);
    if let Some((value, path)) = top.get("running") {
        state.running = boolean(value, &path)?;
    }
    if let Some((value, path)) = top.get("version") {
        state.version = string(value, &path)?.to_string();
    }
    if let Some((value, path)) = top.get_optional("artifacts") {
        state.artifacts = Some(string(value, &path)?.to_string());
    }
    if let Some((value, path)) = top.get("restart_generation") {
        state.restart_generation = uint(value, &path)?;
    }
    if let Some((value, path)) = top.get("replicas") {
        state.replicas = uint32(value, &path)?;
    }
    if let Some((value, path)) = top.get("zones") {
        let zones = array(value, &path)?.iter().enumerate();
        state.zones = zones
            .map(|(i, zone)| Ok(string(zone, &format!("{path}[{i}]"))?.to_string()))
            .collect::<Result<_, DesiredError>>()?;
    }
    if let Some((value, path)) = top.get("host_type") {
        state.host_type = string(value, &path)?.to_string();
    }
    if let Some((value, path)) = top.get("allow_temporary_hosts") {
        state.allow_temporary_hosts = boolean(value, &path)?;
    }
    if let Some((value, path)) = top.get("backups") {
        let backups = array(value, &path)?.iter().enumerate();
        state.backups = backups
            .map(|(i, backup)| shape_backup(backup, &format!("{path}[{i}]")))
            .collect::<Result<_, DesiredError>>()?;
    }
    if let Some((value, path)) = top.get_optional("backup_schedule") {
        state.backup_schedule = Some(shape_schedule(value, &path)?);
    }
    if let Some((value, path)) = top.get_optional("restore_from") {
        state.restore_from = Some(string(value, &path)?.to_string());
    }
    if let Some((value, path)) = top.get("max_attempts") {
        state.max_attempts = uint32(value, &path)?;
    }
    Ok(state)
}

/// One entry of `backups`; both fields required.
fn shape_backup(value: &Value, path: &str) -> Result<Backup, DesiredError> {
    let fields = Fields::new(value, path, &BACKUP_FIELDS)?;
    let (name, name_path) = fields.required("name")?;
    let (sink, sink_path) = fields.required("sink")?;
    Ok(Backup {
        name: string(name, &name_path)?.to_string(),
        sink: string(sink, &sink_path)?.to_string(),
    })
}

/// `backup_schedule`; every field required.
fn shape_schedule(value: &Value, path: &str) -> Result<BackupSchedule, DesiredError> {
    let fields = Fields::new(value, path, &BACKUP_SCHEDULE_FIELDS)?;
    let (every, every_path) = fields.required("every")?;
    let (keep, keep_path) = fields.required("keep")?;
    let (sink, sink_path) = fields.required("sink")?;
    let every = string(every, &every_path)?;
    let every_s = parse_duration_s(every).ok_or_else(|| {
        DesiredError::new(
            &every_path,
            format!(
                "must be a whole number and one unit (s, m, h, d) such as \"15m\", got {}",
                quoted(every)
            ),
        )
    })?;
    Ok(BackupSchedule {
        every_s,
        keep: uint32(keep, &keep_path)?,
        sink: string(sink, &sink_path)?.to_string(),
    })
}

/// An object being shaped: its unknown fields refused up front, its known
/// ones handed out by name with their paths.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// `value` as an object whose fields are all in `known`.
    fn new(value: &'a Value, path: &str, known: &[&str]) -> Result<Self, DesiredError> {
        let Value::Object(map) = value else {
            let message = format!("must be an object, got {}", describe(value));
            return Err(DesiredError::new(field_or_document(path), message));
        };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(DesiredError::new(
                join(path, &field_name(unknown)),
                format!("is not a known field; the known fields are {}", known.join(", ")),
            ));
        }
        Ok(Fields { map, path: path.to_string() })
    }

    /// A field and its path, or `None` when absent.
    fn get(&self, name: &str) -> Option<(&'a Value, String)> {
        self.map.get(name).map(|value| (value, join(&self.path, name)))
    }

    /// A field whose absence has no default: absent or `null` is `None`.
    fn get_optional(&self, name: &str) -> Option<(&'a Value, String)> {
        self.get(name).filter(|(value, _)| !value.is_null())
    }

    /// A field that must be given.
    fn required(&self, name: &str) -> Result<(&'a Value, String), DesiredError> {
        self.get(name).ok_or_else(|| DesiredError::new(join(&self.path, name), "is required"))
    }
}

fn boolean(value: &Value, path: &str) -> Result<bool, DesiredError> {
    value.as_bool().ok_or_else(|| wrong_type(value, path, "a boolean"))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, DesiredError> {
    value.as_str().ok_or_else(|| wrong_type(value, path, "a string"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], DesiredError> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| wrong_type(value, path, "an array"))
}

/// A non-negative integer that fits `u64`.
fn uint(value: &Value, path: &str) -> Result<u64, DesiredError> {
    value.as_u64().ok_or_else(|| wrong_type(value, path, "a non-negative integer"))
}

/// A non-negative integer that fits `u32` (the ranges are checked later).
fn uint32(value: &Value, path: &str) -> Result<u32, DesiredError> {
    let n = uint(value, path)?;
    u32::try_from(n)
        .map_err(|_| DesiredError::new(path, format!("must be at most {}, got {n}", u32::MAX)))
}

fn wrong_type(value: &Value, path: &str, expected: &str) -> DesiredError {
    DesiredError::new(path, format!("must be {expected}, got {}", describe(value)))
}

/// A JSON value as an error message shows it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", quoted(s)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A string quoted and escaped for a message, cut to a readable length.
fn quoted(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    let shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    let cut = if shown.len() < text.len() { "…" } else { "" };
    format!("{shown:?}{cut}")
}

/// `"15m"` as seconds: a whole number of ASCII digits and one unit. `None`
/// when malformed; a number too large for `u64` saturates, so the range check
/// refuses it with the field's limits.
fn parse_duration_s(text: &str) -> Option<u64> {
    let (digits, unit_s) = DURATION_UNITS_S
        .iter()
        .find_map(|&(unit, unit_s)| text.strip_suffix(unit).map(|digits| (digits, unit_s)))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().map_or(u64::MAX, |n| n.saturating_mul(unit_s)))
}

/// Seconds as the largest unit that divides them: 3600 → `"1h"`.
fn format_duration(seconds: u64) -> String {
    let (unit, unit_s) = DURATION_UNITS_S
        .iter()
        .copied()
        .find(|&(_, unit_s)| seconds % unit_s == 0 && seconds != 0)
        .unwrap_or(('s', 1));
    format!("{}{unit}", seconds / unit_s)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A field name as an error shows it: plain when it is a plain name, quoted
/// as JSON otherwise, so that an empty or dotted name stays visible.
fn field_name(name: &str) -> String {
    let plain =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        name.to_string()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| format!("{name:?}"))
    }
}

fn field_or_document(path: &str) -> &str {
    if path.is_empty() {
        "document"
    } else {
        path
    }
}

// ---- Stage 3: value rules ----

fn check_range(n: u64, path: &str, min: u64, max: u64) -> Result<(), DesiredError> {
    if n < min || n > max {
        return Err(DesiredError::new(path, format!("must be from {min} to {max}, got {n}")));
    }
    Ok(())
}

/// Free text (a path or URL): not empty, bounded, no control characters.
fn check_text(text: &str, path: &str) -> Result<(), DesiredError> {
    if text.is_empty() {
        return Err(DesiredError::new(path, "must not be empty"));
    }
    if text.len() > TEXT_BYTES_MAX {
        let message = format!("is {} bytes, above the limit of {TEXT_BYTES_MAX}", text.len());
        return Err(DesiredError::new(path, message));
    }
    if text.chars().any(char::is_control) {
        return Err(DesiredError::new(path, "must not hold control characters"));
    }
    Ok(())
}

/// A directory path, or an `http://` or `https://` URL.
fn check_location(text: &str, path: &str) -> Result<(), DesiredError> {
    let is_url = text.contains("://");
    if is_url && !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err(DesiredError::new(
            path,
            format!("must be a directory or an http:// or https:// URL, got {}", quoted(text)),
        ));
    }
    // Every agent reads it from its own working directory: only an absolute
    // path names the same directory on all of them.
    if !is_url && !text.starts_with('/') {
        return Err(DesiredError::new(
            path,
            format!(
                "a directory must be an absolute path (agents run in directories of their \
                 own), got {}",
                quoted(text)
            ),
        ));
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), DesiredError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-');
    if version.is_empty() || version.chars().count() > VERSION_CHARS_MAX {
        return Err(DesiredError::new(
            "version",
            format!("must be 1 to {VERSION_CHARS_MAX} characters, got {}", quoted(version)),
        ));
    }
    if let Some(bad) = version.chars().find(|&c| !allowed(c)) {
        return Err(DesiredError::new(
            "version",
            format!(
                "may hold only A-Z, a-z, 0-9, '.', '+' and '-'; {bad:?} in {}",
                quoted(version)
            ),
        ));
    }
    Ok(())
}

/// A name: 1 to [`NAME_CHARS_MAX`] characters of a-z, 0-9 and `extra`.
fn check_name(name: &str, path: &str, extra: &[char]) -> Result<(), DesiredError> {
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(DesiredError::new(
            path,
            format!("must be 1 to {NAME_CHARS_MAX} characters, got {}", quoted(name)),
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c);
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        let extra: Vec<String> = extra.iter().map(|c| format!("'{c}'")).collect();
        return Err(DesiredError::new(
            path,
            format!("may hold only a-z, 0-9, {}; {bad:?} in {}", extra.join(", "), quoted(name)),
        ));
    }
    Ok(())
}

fn check_zones(zones: &[String]) -> Result<(), DesiredError> {
    if zones.is_empty() {
        return Err(DesiredError::new("zones", "must name at least one zone"));
    }
    if zones.len() > ZONES_MAX {
        let message = format!("must name at most {ZONES_MAX} zones, got {}", zones.len());
        return Err(DesiredError::new("zones", message));
    }
    for (i, zone) in zones.iter().enumerate() {
        let path = format!("zones[{i}]");
        check_name(zone, &path, &['-'])?;
        if zone.starts_with('-') || zone.ends_with('-') {
            let message = format!("must not start or end with '-', got {}", quoted(zone));
            return Err(DesiredError::new(path, message));
        }
        if let Some(first) = zones[..i].iter().position(|z| z == zone) {
            let message = format!("{} is already zones[{first}]", quoted(zone));
            return Err(DesiredError::new(path, message));
        }
    }
    Ok(())
}

fn check_backups(backups: &[Backup]) -> Result<(), DesiredError> {
    if backups.len() > BACKUPS_MAX {
        let message = format!("must list at most {BACKUPS_MAX} backups, got {}", backups.len());
        return Err(DesiredError::new("backups", message));
    }
    let mut names = std::collections::BTreeMap::new();
    for (i, backup) in backups.iter().enumerate() {
        let name_path = format!("backups[{i}].name");
        check_name(&backup.name, &name_path, &['-', '_'])?;
        if backup.name == "files" {
            return Err(DesiredError::new(
                name_path,
                "'files' is reserved; name the backup otherwise",
            ));
        }
        if backup.name.starts_with(SCHEDULED_PREFIX) {
            let message = format!(
                "names starting with '{SCHEDULED_PREFIX}' are kept for scheduled backups, got {}",
                quoted(&backup.name)
            );
            return Err(DesiredError::new(name_path, message));
        }
        if let Some(first) = names.insert(backup.name.as_str(), i) {
            let message = format!("{} is already backups[{first}].name", quoted(&backup.name));
            return Err(DesiredError::new(name_path, message));
        }
        check_sink(&backup.sink, &format!("backups[{i}].sink"))?;
    }
    Ok(())
}

/// A sink: the name of a directory under the cluster's backup root, never a
/// path (so every backup stays inside that root).
fn check_sink(sink: &str, path: &str) -> Result<(), DesiredError> {
    if sink.contains('/') || sink.contains('\\') || sink.contains("..") {
        return Err(DesiredError::new(
            path,
            format!(
                "names a directory under the cluster's backup root (such as \"nightly\"; \
                 .cairn/backups/nightly for `cairn up`), not a path: got {}",
                quoted(sink)
            ),
        ));
    }
    check_name(sink, path, &['-', '_'])
}

fn check_schedule(schedule: &BackupSchedule) -> Result<(), DesiredError> {
    let every_s = schedule.every_s;
    if !(BACKUP_EVERY_S_MIN..=BACKUP_EVERY_S_MAX).contains(&every_s) {
        return Err(DesiredError::new(
            "backup_schedule.every",
            format!(
                "must be from {} to {}, got {every_s} s",
                format_duration(BACKUP_EVERY_S_MIN),
                format_duration(BACKUP_EVERY_S_MAX)
            ),
        ));
    }
    let keep = u64::from(schedule.keep);
    check_range(keep, "backup_schedule.keep", 1, u64::from(BACKUP_KEEP_MAX))?;
    check_sink(&schedule.sink, "backup_schedule.sink")
}
