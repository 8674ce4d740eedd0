//! The desired state as the operator writes it: what `parse` accepts, what it
//! refuses and with which field named, and which changes `check_transition`
//! forbids. Every refusal asserts the exact field path, since that is what
//! the operator reads first.
//!
//! Reproduce a failure with `cargo test -p cairn-control --test desired NAME`;
//! the property tests print the failing input, and proptest keeps it under
//! `proptest-regressions/` to replay first.

use cairn_control::desired::{
    check_supported, check_transition, parse, validate, Backup, BackupSchedule, DesiredState,
    BACKUPS_MAX, BACKUP_EVERY_S_MAX, BACKUP_EVERY_S_MIN, BACKUP_KEEP_MAX, DOCUMENT_BYTES_MAX,
    DOCUMENT_DEPTH_MAX, FIELDS, REPLICAS_ALLOWED, ZONES_MAX,
};
use cairn_util::version;
use proptest::prelude::*;

/// The repository's example, which the docs point operators to.
const EXAMPLE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../desired_state.jsonc"));

/// Asserts that `text` is refused, naming exactly `field`, with a message that
/// holds `needle`.
#[track_caller]
fn assert_refused(text: &str, field: &str, needle: &str) {
    match parse(text) {
        Ok(state) => panic!("accepted {text}\nas {state:?}\nexpected a refusal naming {field}"),
        Err(error) => {
            assert_eq!(error.field, field, "document: {text}\nerror: {error}");
            assert!(
                error.message.contains(needle),
                "document: {text}\nerror: {error}\nexpected the message to hold {needle:?}"
            );
        }
    }
}

/// A document with id 5 and the given fields.
fn with(fields: &str) -> String {
    format!("{{ \"id\": 5, {fields} }}")
}

#[track_caller]
fn accepted(text: &str) -> DesiredState {
    parse(text).unwrap_or_else(|error| panic!("refused {text}\nwith {error}"))
}

// ---- What this version acts on ----

/// Every field is acted on now: `check_supported` passes states that use
/// each of them (the repository's example included).
#[test]
fn every_field_is_acted_on() {
    assert_eq!(check_supported(&accepted(EXAMPLE)), Ok(()));
    for acted_on in [
        r#""restore_from": "/srv/b/b1""#,
        r#""artifacts": "/srv/releases""#,
        r#""version": "9.9.9", "artifacts": "https://example.com/cairn""#,
        r#""backups": []"#,
        r#""backups": [{ "name": "b1", "sink": "manual" }]"#,
        r#""backup_schedule": { "every": "6h", "keep": 4, "sink": "nightly" }"#,
    ] {
        assert_eq!(check_supported(&accepted(&with(acted_on))), Ok(()), "{acted_on}");
    }
}

// ---- Reading the text ----

/// The example at the repository's root parses, and starts a 3-replica
/// cluster over three zones with nothing optional set.
#[test]
fn the_repository_example_parses_to_a_three_replica_cluster() {
    let state = accepted(EXAMPLE);
    assert_eq!(state.id, 1);
    assert!(state.running);
    assert_eq!(state.replicas, 3);
    assert_eq!(state.zones, ["zone-a", "zone-b", "zone-c"]);
    assert_eq!(state.restart_generation, 0);
    assert_eq!(state.version, version());
    assert_eq!((state.artifacts, state.restore_from, state.backup_schedule), (None, None, None));
    assert!(state.backups.is_empty());
}

/// The example documents every field, so an operator never needs another
/// reference.
#[test]
fn the_repository_example_mentions_every_field() {
    for field in FIELDS {
        assert!(EXAMPLE.contains(&format!("\"{field}\"")), "{field} is not in the example");
    }
    for field in ["every", "keep", "sink", "name"] {
        assert!(EXAMPLE.contains(field), "{field} is not in the example");
    }
}

/// Both kinds of comment and trailing commas, in objects and arrays, are
/// accepted.
#[test]
fn comments_and_trailing_commas_are_accepted() {
    let text = r#"
        // a line comment
        {
          /* a block
             comment */
          "id": 7, // after a value
          "zones": ["zone-a", "zone-b",],
          "backups": [{ "name": "b1", "sink": "manual", },],
        }
    "#;
    let state = accepted(text);
    assert_eq!(state.id, 7);
    assert_eq!(state.zones, ["zone-a", "zone-b"]);
    assert_eq!(state.backups, [Backup { name: "b1".into(), sink: "manual".into() }]);
}

/// A document with only `id` takes every default.
#[test]
fn absent_fields_take_their_defaults() {
    let state = accepted(r#"{ "id": 9 }"#);
    assert_eq!(state, DesiredState::default_with_id(9));
    assert_eq!(state, DesiredState::default_with_id(9));
    assert!(state.running);
    assert_eq!(state.version, version());
    assert_eq!(state.replicas, 3);
    assert_eq!(state.zones, ["zone-a"]);
    assert_eq!(state.host_type, "small");
    assert!(!state.allow_temporary_hosts);
    assert_eq!(state.max_attempts, 5);
    assert_eq!(state.restart_generation, 0);
    assert!(state.backups.is_empty());
}

/// Syntax errors name the document and where: line and column.
#[test]
fn syntax_errors_name_the_document_with_line_and_column() {
    assert_refused("{\n  \"id\": 1,\n  \"running\": tru\n}", "document", "line 3:14");
    assert_refused("{ \"id\": 1, }}", "document", "line 1:");
    assert_refused("{ \"id\": 1", "document", "line 1:");
    assert_refused("{ id: 1 }", "document", "line 1:3");
    assert_refused("/* never closed", "document", "line 1:");
}

/// The parser would take a missing comma as if it were there; a lost line
/// must not change the meaning silently, so it is refused.
#[test]
fn a_missing_comma_is_refused() {
    assert_refused(
        "{\n  \"id\": 1\n  \"running\": true\n}",
        "document",
        "line 3:3: expected a comma",
    );
    assert_refused(r#"{ "id": 1, "zones": ["a" "b"] }"#, "document", "line 1:26");
    assert_refused(r#"{ "id": 1, "zones": [] /* c */ "replicas": 3 }"#, "document", "comma");
    assert_refused(r#"{ "id": 1, "backups": [{} {}] }"#, "document", "comma");
    assert_refused(r#"{ "id": 1, "zones": [01] }"#, "document", "comma");
}

#[test]
fn a_document_that_is_not_one_object_is_refused() {
    assert_refused("", "document", "empty");
    assert_refused("  // only a comment\n", "document", "empty");
    assert_refused("[]", "document", "must be an object, got an array");
    assert_refused("5", "document", "must be an object, got number 5");
    assert_refused("{} {}", "document", "line 1:");
}

/// A key given twice is refused rather than the last one silently winning.
#[test]
fn a_field_given_twice_is_refused() {
    assert_refused(r#"{ "id": 1, "replicas": 3, "replicas": 5 }"#, "replicas", "twice");
    assert_refused(
        r#"{ "id": 1, "backups": [{ "name": "a", "name": "b", "sink": "s" }] }"#,
        "backups[0].name",
        "twice",
    );
}

/// Unknown fields are refused at every level, naming the field and listing the
/// known ones (a misspelt field would otherwise be silently ignored).
#[test]
fn unknown_fields_are_refused_with_the_known_ones_listed() {
    assert_refused(&with(r#""replica": 3"#), "replica", "id, running, version");
    assert_refused(
        &with(r#""backups": [{ "name": "a", "sink": "s", "when": "now" }]"#),
        "backups[0].when",
        "name, sink",
    );
    assert_refused(
        &with(r#""backup_schedule": { "every": "1h", "keep": 3, "sink": "s", "at": 1 }"#),
        "backup_schedule.at",
        "every, keep, sink",
    );
    // A name that is empty or holds a dot is quoted, so that the error still
    // names it (found by `a_damaged_example_never_panics`).
    assert_refused(&with(r#""": "0.2.0""#), r#""""#, "id, running, version");
    assert_refused(&with(r#""a.b": 1"#), r#""a.b""#, "not a known field");
}

/// The document's size and nesting are bounded before parsing; brackets
/// inside comments and strings do not count.
#[test]
fn size_and_nesting_are_bounded() {
    let huge = format!("{{ \"id\": 1 }}{}", " ".repeat(DOCUMENT_BYTES_MAX));
    assert_refused(&huge, "document", "bytes");
    assert_refused(&"[".repeat(100_000), "document", "deeper");
    // The top-level object is one level, so zones may nest one level less.
    let nested = |depth| format!("\"zones\": {}{}", "[".repeat(depth), "]".repeat(depth));
    assert_refused(&with(&nested(DOCUMENT_DEPTH_MAX - 1)), "zones[0]", "must be a string");
    assert_refused(&with(&nested(DOCUMENT_DEPTH_MAX)), "document", "deeper than 32");
    let brackets = "[{".repeat(DOCUMENT_DEPTH_MAX);
    let quiet = format!(
        "// {brackets}\n/* {brackets} */\n{{ \"id\": 1, \"restore_from\": \"/{brackets}\" }}"
    );
    let expected = format!("/{brackets}");
    assert_eq!(accepted(&quiet).restore_from.as_deref(), Some(expected.as_str()));
}

// ---- Each field ----

/// `id` is required, a whole number, at least 1.
#[test]
fn id_is_a_required_positive_integer() {
    assert_refused(r#"{ "running": true }"#, "id", "required");
    assert_refused(r#"{ "id": 0 }"#, "id", "at least 1");
    assert_refused(r#"{ "id": 3.5 }"#, "id", "must be a non-negative integer, got number 3.5");
    assert_refused(r#"{ "id": -1 }"#, "id", "got number -1");
    assert_refused(r#"{ "id": "3" }"#, "id", "got string \"3\"");
    assert_refused(r#"{ "id": 3.0 }"#, "id", "non-negative integer");
    assert_refused(r#"{ "id": 18446744073709551616 }"#, "id", "non-negative integer");
    assert_refused(r#"{ "id": 1e999 }"#, "id", "out of range");
    assert_refused(r#"{ "id": null }"#, "id", "got null");
    assert_eq!(accepted(r#"{ "id": 18446744073709551615 }"#).id, u64::MAX);
}

#[test]
fn booleans_must_be_booleans() {
    assert_refused(&with(r#""running": "yes""#), "running", "must be a boolean, got string");
    assert_refused(&with(r#""running": 1"#), "running", "got number 1");
    assert_refused(&with(r#""running": null"#), "running", "got null");
    assert_refused(&with(r#""allow_temporary_hosts": []"#), "allow_temporary_hosts", "boolean");
    assert!(!accepted(&with(r#""running": false"#)).running);
    assert!(accepted(&with(r#""allow_temporary_hosts": true"#)).allow_temporary_hosts);
}

/// `version` is a non-empty string of [0-9A-Za-z.+-].
#[test]
fn version_is_a_plain_version_string() {
    assert_refused(&with(r#""version": """#), "version", "1 to 64");
    assert_refused(&with(r#""version": "1.0 beta""#), "version", "' '");
    assert_refused(&with(r#""version": "../x""#), "version", "'/'");
    assert_refused(&with(&format!("\"version\": \"{}\"", "1".repeat(65))), "version", "1 to 64");
    assert_refused(&with(r#""version": 1"#), "version", "must be a string");
    assert_eq!(accepted(&with(r#""version": "1.2.3-rc.1+b7""#)).version, "1.2.3-rc.1+b7");
}

/// `artifacts` is a directory or an http(s) URL; `null` means none.
#[test]
fn artifacts_is_a_directory_or_a_web_url() {
    assert_refused(&with(r#""artifacts": """#), "artifacts", "must not be empty");
    assert_refused(&with(r#""artifacts": "ftp://host/x""#), "artifacts", "http://");
    assert_refused(&with(r#""artifacts": "/a\nb""#), "artifacts", "control");
    assert_refused(&with(r#""artifacts": false"#), "artifacts", "must be a string");
    assert_refused(&with(r#""artifacts": "releases""#), "artifacts", "absolute path");
    for location in ["/srv/cairn", "https://example.com/cairn", "http://10.0.0.1:8080/x"] {
        let state = accepted(&with(&format!("\"artifacts\": \"{location}\"")));
        assert_eq!(state.artifacts.as_deref(), Some(location));
    }
    assert_eq!(accepted(&with(r#""artifacts": null"#)).artifacts, None);
}

/// `restart_generation` is a logical clock bounded by `id`; the message names
/// both values.
#[test]
fn restart_generation_may_not_pass_id() {
    assert_refused(&with(r#""restart_generation": 6"#), "restart_generation", "6 is above id 5");
    assert_refused(&with(r#""restart_generation": -1"#), "restart_generation", "non-negative");
    assert_eq!(accepted(&with(r#""restart_generation": 5"#)).restart_generation, 5);
}

#[test]
fn replicas_is_one_of_1_3_5_7() {
    for bad in ["0", "2", "4", "6", "8", "9"] {
        let message = format!("must be one of 1, 3, 5, 7, got {bad}");
        assert_refused(&with(&format!("\"replicas\": {bad}")), "replicas", &message);
    }
    assert_refused(&with(r#""replicas": 4294967296"#), "replicas", "at most");
    assert_refused(&with(r#""replicas": 3.5"#), "replicas", "non-negative integer");
    for good in [1, 3, 5, 7] {
        assert_eq!(accepted(&with(&format!("\"replicas\": {good}"))).replicas, good);
    }
}

/// Zones: 1 to 7 distinct DNS-label names; each fault names its index.
#[test]
fn zones_are_distinct_dns_labels() {
    assert_refused(&with(r#""zones": []"#), "zones", "at least one");
    assert_refused(&with(r#""zones": "zone-a""#), "zones", "must be an array");
    assert_refused(&with(r#""zones": ["a", 2]"#), "zones[1]", "must be a string, got number 2");
    assert_refused(&with(r#""zones": ["a", "Zone-B"]"#), "zones[1]", "'Z'");
    assert_refused(&with(r#""zones": ["a", "b_c"]"#), "zones[1]", "'_'");
    assert_refused(&with(r#""zones": ["-a"]"#), "zones[0]", "start or end");
    assert_refused(&with(r#""zones": ["a", "b", "a-"]"#), "zones[2]", "start or end");
    assert_refused(&with(r#""zones": ["a", ""]"#), "zones[1]", "1 to 63");
    let long = "z".repeat(64);
    assert_refused(&with(&format!("\"zones\": [\"{long}\"]")), "zones[0]", "1 to 63");
    assert_refused(&with(r#""zones": ["a", "b", "a"]"#), "zones[2]", "already zones[0]");
    let eight = r#""zones": ["a", "b", "c", "d", "e", "f", "g", "h"]"#;
    assert_refused(&with(eight), "zones", "at most 7");
    let state = accepted(&with(&format!("\"zones\": [\"{}\", \"a-1\"]", "z".repeat(63))));
    assert_eq!(state.zones.len(), 2);
}

#[test]
fn host_type_is_a_name_with_dots_dashes_and_underscores() {
    assert_refused(&with(r#""host_type": """#), "host_type", "1 to 63");
    assert_refused(&with(r#""host_type": "M5.large""#), "host_type", "'M'");
    assert_refused(&with(r#""host_type": "a b""#), "host_type", "' '");
    assert_refused(&with(r#""host_type": 5"#), "host_type", "must be a string");
    assert_eq!(accepted(&with(r#""host_type": "m5.x-large_2""#)).host_type, "m5.x-large_2");
}

/// Backups: objects with a unique name and a sink, both required.
#[test]
fn backups_have_unique_names_and_a_sink() {
    assert_refused(&with(r#""backups": {}"#), "backups", "must be an array, got an object");
    assert_refused(&with(r#""backups": ["b"]"#), "backups[0]", "must be an object, got string");
    assert_refused(&with(r#""backups": [{ "sink": "s" }]"#), "backups[0].name", "required");
    assert_refused(&with(r#""backups": [{ "name": "a" }]"#), "backups[0].sink", "required");
    let bad_name = r#""backups": [{ "name": "a", "sink": "s" }, { "name": "B", "sink": "s" }]"#;
    assert_refused(&with(bad_name), "backups[1].name", "'B'");
    assert_refused(&with(r#""backups": [{ "name": "", "sink": "s" }]"#), "backups[0].name", "1 to");
    assert_refused(
        &with(r#""backups": [{ "name": "a", "sink": "" }]"#),
        "backups[0].sink",
        "1 to 63",
    );
    // A sink is a directory under the cluster's backup root, by name: no
    // path can leave the root.
    for sink in ["/srv/b", "../b", "a/b", "..", "a\\b", "Nightly"] {
        let text = with(&format!(r#""backups": [{{ "name": "a", "sink": "{sink}" }}]"#));
        let error = parse(&text).expect_err(sink);
        assert_eq!(error.field, "backups[0].sink", "{sink}: {error}");
    }
    let schedule = with(r#""backup_schedule": { "every": "1h", "keep": 2, "sink": "/srv" }"#);
    assert_refused(&schedule, "backup_schedule.sink", "not a path");
    assert_refused(
        &with(r#""backups": [{ "name": "scheduled-1", "sink": "s" }]"#),
        "backups[0].name",
        "scheduled backups",
    );
    assert_refused(
        &with(r#""backups": [{ "name": "files", "sink": "s" }]"#),
        "backups[0].name",
        "reserved",
    );
    assert_refused(
        &with(r#""backups": [{ "name": "a", "sink": 1 }]"#),
        "backups[0].sink",
        "string",
    );
    let twice = r#""backups": [{ "name": "a", "sink": "s" }, { "name": "a", "sink": "t" }]"#;
    assert_refused(&with(twice), "backups[1].name", "already backups[0].name");
    let entry = r#"{ "name": "n", "sink": "s" }"#;
    let many = vec![entry; BACKUPS_MAX + 1].join(",");
    assert_refused(&with(&format!("\"backups\": [{many}]")), "backups", "at most");
    let state = accepted(&with(r#""backups": [{ "name": "nightly_1-a", "sink": "b_2-c" }]"#));
    assert_eq!(state.backups, [Backup { name: "nightly_1-a".into(), sink: "b_2-c".into() }]);
}

/// The schedule's period is a whole number and one unit, at least a minute.
#[test]
fn backup_schedule_takes_a_period_a_count_and_a_sink() {
    let schedule = |every: &str, keep: &str| {
        with(&format!(
            "\"backup_schedule\": {{ \"every\": {every}, \"keep\": {keep}, \"sink\": \"b\" }}"
        ))
    };
    let path = "backup_schedule.every";
    assert_refused(&schedule("\"30s\"", "3"), path, "must be from 1m to 366d, got 30 s");
    assert_refused(&schedule("\"367d\"", "3"), path, "366d");
    assert_refused(&schedule("\"99999999999999999999d\"", "3"), path, "366d");
    for malformed in ["\"1.5h\"", "\"15\"", "\"m\"", "\"15x\"", "\" 15m\"", "\"-5m\"", "\"1h30m\""]
    {
        assert_refused(&schedule(malformed, "3"), path, "one unit");
    }
    assert_refused(&schedule("60", "3"), path, "must be a string, got number 60");
    assert_refused(&schedule("\"1h\"", "0"), "backup_schedule.keep", "from 1 to 1000, got 0");
    assert_refused(&schedule("\"1h\"", "1001"), "backup_schedule.keep", "from 1 to 1000");
    assert_refused(&schedule("\"1h\"", "\"3\""), "backup_schedule.keep", "non-negative integer");
    let no_sink = with(r#""backup_schedule": { "every": "1h", "keep": 3 }"#);
    assert_refused(&no_sink, "backup_schedule.sink", "required");
    assert_refused(&with(r#""backup_schedule": "1h""#), "backup_schedule", "must be an object");
    for (every, every_s) in [("\"1m\"", BACKUP_EVERY_S_MIN), ("\"90s\"", 90), ("\"2h\"", 7_200)] {
        let state = accepted(&schedule(every, "24"));
        let expected = BackupSchedule { every_s, keep: 24, sink: "b".into() };
        assert_eq!(state.backup_schedule, Some(expected));
    }
    assert_eq!(accepted(&schedule("\"1d\"", "1")).backup_schedule.map(|s| s.every_s), Some(86_400));
    assert_eq!(accepted(&with(r#""backup_schedule": null"#)).backup_schedule, None);
}

#[test]
fn restore_from_is_a_non_empty_location() {
    assert_refused(&with(r#""restore_from": """#), "restore_from", "empty");
    assert_refused(&with(r#""restore_from": 3"#), "restore_from", "must be a string");
    assert_eq!(accepted(&with(r#""restore_from": "/b/x""#)).restore_from.as_deref(), Some("/b/x"));
    assert_refused(&with(r#""restore_from": "b/x""#), "restore_from", "absolute path");
}

#[test]
fn max_attempts_is_from_1_to_100() {
    assert_refused(&with(r#""max_attempts": 0"#), "max_attempts", "from 1 to 100, got 0");
    assert_refused(&with(r#""max_attempts": 101"#), "max_attempts", "from 1 to 100, got 101");
    assert_refused(&with(r#""max_attempts": true"#), "max_attempts", "got boolean true");
    assert_eq!(accepted(&with(r#""max_attempts": 100"#)).max_attempts, 100);
}

// ---- Transitions ----

/// Ids only go up; the message states both ids.
#[test]
fn a_new_state_must_raise_the_id() {
    let accepted_state = DesiredState::default_with_id(5);
    for id in [4, 5] {
        let error =
            check_transition(Some(&accepted_state), true, &DesiredState::default_with_id(id))
                .expect_err("an id not above the accepted one");
        assert_eq!(error.field, "id");
        assert_eq!(error.to_string(), format!("id: {id} is not above the accepted id 5"));
    }
    assert_eq!(
        check_transition(Some(&accepted_state), true, &DesiredState::default_with_id(6)),
        Ok(())
    );
    assert_eq!(check_transition(None, false, &DesiredState::default_with_id(1)), Ok(()));
}

/// A rolling restart is never undone by lowering `restart_generation`.
#[test]
fn restart_generation_never_goes_down() {
    let accepted_state = DesiredState { restart_generation: 3, ..DesiredState::default_with_id(5) };
    let lower = DesiredState { restart_generation: 2, ..DesiredState::default_with_id(6) };
    let error = check_transition(Some(&accepted_state), true, &lower).expect_err("lowered");
    assert_eq!(error.field, "restart_generation");
    assert!(error.message.contains("2 is below the accepted restart_generation 3"), "{error}");
    let same = DesiredState { restart_generation: 3, ..DesiredState::default_with_id(6) };
    assert_eq!(check_transition(Some(&accepted_state), true, &same), Ok(()));
}

/// `restore_from` starts a new cluster; once it has run, a new one is refused,
/// but the accepted one carried over unchanged is not a new request.
#[test]
fn restore_from_is_only_for_a_cluster_that_never_ran() {
    let restoring = |id, from: &str| DesiredState {
        restore_from: Some(from.to_string()),
        ..DesiredState::default_with_id(id)
    };
    assert_eq!(check_transition(None, false, &restoring(1, "/b/x")), Ok(()));
    let error = check_transition(None, true, &restoring(1, "/b/x")).expect_err("has run");
    assert_eq!(error.field, "restore_from");
    let plain = DesiredState::default_with_id(1);
    let error = check_transition(Some(&plain), true, &restoring(2, "/b/x")).expect_err("has run");
    assert_eq!(error.field, "restore_from");
    let first = restoring(1, "/b/x");
    assert_eq!(check_transition(Some(&first), true, &restoring(2, "/b/x")), Ok(()));
    let error = check_transition(Some(&first), true, &restoring(2, "/b/y")).expect_err("new");
    assert_eq!(error.field, "restore_from");
    assert_eq!(check_transition(Some(&first), false, &restoring(2, "/b/y")), Ok(()));
}

// ---- Properties ----

/// States with every field drawn from a mix of valid and invalid values.
fn any_state() -> impl Strategy<Value = DesiredState> {
    let text = prop_oneof!["[a-z/]{0,6}", "(https?|ftp)://[a-z.]{0,6}", ".{0,6}"];
    let scalars = (
        prop_oneof![0..12u64, any::<u64>()],
        any::<bool>(),
        prop_oneof![Just(version().to_string()), "[0-9A-Za-z.+-]{0,3}", ".{0,4}"],
        proptest::option::of(text.clone()),
        0..14u64,
        0..9u32,
        proptest::collection::vec("[a-z0-9-]{0,4}", 0..9),
        prop_oneof!["[a-z0-9._-]{1,6}", ".{0,4}"],
        any::<bool>(),
        prop_oneof![1..=100u32, any::<u32>()],
    );
    let backups = proptest::collection::vec(("[a-z0-9_-]{0,3}", text.clone()), 0..4);
    let schedule = (prop_oneof![0..200_000u64, any::<u64>()], 0..1_003u32, text.clone());
    let optional = (backups, proptest::option::of(schedule), proptest::option::of(text));
    (scalars, optional).prop_map(|(scalars, (backups, schedule, restore_from))| {
        let (id, running, version, artifacts, restart_generation, replicas, zones, host_type) = (
            scalars.0, scalars.1, scalars.2, scalars.3, scalars.4, scalars.5, scalars.6, scalars.7,
        );
        DesiredState {
            id,
            running,
            version,
            artifacts,
            restart_generation,
            replicas,
            zones,
            host_type,
            allow_temporary_hosts: scalars.8,
            backups: backups.into_iter().map(|(name, sink)| Backup { name, sink }).collect(),
            backup_schedule: schedule.map(|(every_s, keep, sink)| BackupSchedule {
                every_s,
                keep,
                sink,
            }),
            restore_from,
            max_attempts: scalars.9,
        }
    })
}

/// States that follow every value rule, built field by field.
fn valid_state() -> impl Strategy<Value = DesiredState> {
    let sink = "[a-z0-9_-]{1,12}";
    let path = "/[^\\p{Cc}]{0,11}";
    let location = prop_oneof!["/[a-z0-9/._-]{0,12}", "https?://[a-z.]{1,10}(/[a-z]{0,4})?"];
    let scalars = (
        1..1_000u64,
        0..1_000u64,
        any::<bool>(),
        prop_oneof![Just(version().to_string()), "[0-9A-Za-z.+-]{1,20}"],
        proptest::option::of(location),
        proptest::sample::select(REPLICAS_ALLOWED.to_vec()),
        proptest::collection::btree_set("[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", 1..=ZONES_MAX),
        "[a-z0-9._-]{1,10}",
        any::<bool>(),
        1..=100u32,
    );
    let schedule = (BACKUP_EVERY_S_MIN..=BACKUP_EVERY_S_MAX, 1..=BACKUP_KEEP_MAX, sink);
    let optional = (
        proptest::collection::btree_map("b[a-z0-9_-]{0,7}", sink, 0..5),
        proptest::option::of(schedule),
        proptest::option::of(path),
    );
    (scalars, optional).prop_map(|(scalars, (backups, schedule, restore_from))| {
        let (id, generation, running, version, artifacts, replicas, zones, host_type) = (
            scalars.0, scalars.1, scalars.2, scalars.3, scalars.4, scalars.5, scalars.6, scalars.7,
        );
        DesiredState {
            id,
            running,
            version,
            artifacts,
            restart_generation: generation.min(id),
            replicas,
            zones: zones.into_iter().collect(),
            host_type,
            allow_temporary_hosts: scalars.8,
            backups: backups.into_iter().map(|(name, sink)| Backup { name, sink }).collect(),
            backup_schedule: schedule.map(|(every_s, keep, sink)| BackupSchedule {
                every_s,
                keep,
                sink,
            }),
            restore_from,
            max_attempts: scalars.9,
        }
    })
}

proptest! {
    /// Every valid state is written and read back unchanged, and the next id
    /// with the same fields is an allowed change.
    #[test]
    fn valid_states_round_trip(state in valid_state()) {
        prop_assert_eq!(validate(&state), Ok(()));
        prop_assert_eq!(parse(&state.to_jsonc()), Ok(state.clone()));
        let next = DesiredState { id: state.id + 1, ..state.clone() };
        prop_assert_eq!(check_transition(Some(&state), true, &next), Ok(()));
    }

    /// Whatever the bytes, `parse` answers without panicking.
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }

    /// Text made of JSON's punctuation reaches deep into the parser and the
    /// shape checks; it never panics either.
    #[test]
    fn json_like_text_never_panics(text in r#"[\[\]{}",:'0-9a-z_ /*\n.-]{0,300}"#) {
        let _ = parse(&text);
    }

    /// The example with a random slice replaced: refused or accepted, never a
    /// panic, and a refusal always names a field.
    #[test]
    fn a_damaged_example_never_panics(at in 0..EXAMPLE.len(), cut in 0..40usize, insert in ".{0,6}") {
        let end = (at + cut).min(EXAMPLE.len());
        if EXAMPLE.is_char_boundary(at) && EXAMPLE.is_char_boundary(end) {
            let damaged = format!("{}{insert}{}", &EXAMPLE[..at], &EXAMPLE[end..]);
            if let Err(error) = parse(&damaged) {
                prop_assert!(!error.field.is_empty());
            }
        }
    }

    /// Writing a state and reading it back gives the state exactly when it is
    /// valid, and the validation error otherwise: the file format and the
    /// value rules agree.
    #[test]
    fn written_states_read_back_as_validated(state in any_state()) {
        let expected = validate(&state).map(|()| state.clone());
        prop_assert_eq!(parse(&state.to_jsonc()), expected);
    }
}
