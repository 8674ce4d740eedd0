//! The desired-state parser (JSONC) on any text an operator could write or
//! send to the cloud: it never panics; a state it accepts passes its own
//! validation again, is accepted as a cluster's first state, and is refused
//! as its own successor (ids must rise).
#![no_main]

use cairn_control::desired::{check_transition, parse, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(state) = parse(text) {
        assert!(validate(&state).is_ok(), "a parsed state fails validation");
        assert!(check_transition(None, false, &state).is_ok(), "a first state is refused");
        assert!(check_transition(Some(&state), true, &state).is_err(), "an id did not rise");
    }
});
