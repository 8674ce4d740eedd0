//! How a report reads: one line per key, and for a violation the end of the
//! longest order the search could build and the operations that could not
//! come next.

use std::fmt;

use super::*;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: usize = self.keys.iter().map(|key| key.ops).sum();
        let (keys, unknown) = (self.keys.len(), self.unknown_keys());
        match self.verdict() {
            Verdict::Linearizable => {
                writeln!(f, "linearizable: {keys} keys, {ops} operations")?;
            }
            Verdict::NotLinearizable => {
                let bad = self.violations().count();
                writeln!(f, "NOT linearizable: {bad} of {keys} keys ({ops} operations)")?;
            }
            Verdict::Unknown => {
                let out = format!("{unknown} of {keys} keys ran out of budget");
                writeln!(f, "unknown: no violation found, but {out} ({ops} operations)")?;
            }
        }
        for key in &self.keys {
            match &key.verdict {
                KeyVerdict::Linearizable => {}
                KeyVerdict::NotLinearizable(violation) => write!(f, "{violation}")?,
                KeyVerdict::Unknown(exhausted) => {
                    let what = match exhausted {
                        Exhausted::Steps => "steps",
                        Exhausted::MemoBytes => "memo bytes",
                    };
                    let (name, ops, steps) = (&key.key, key.ops, key.steps);
                    let out = format!("out of {what} after {steps} steps");
                    writeln!(f, "key {name:?}: unknown, {out} ({ops} operations)")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, ops) = (&self.key, self.ops.len());
        writeln!(f, "key {key:?}: not linearizable ({ops} operations)")?;
        let (prefix, value) = (self.prefix.len(), ShowValue(self.value_after_prefix.as_deref()));
        writeln!(f, "  longest linearizable prefix: {prefix} operations, leaving {value}")?;
        let shown = prefix.min(SHOW_PREFIX_OPS_MAX);
        if shown < prefix {
            writeln!(f, "    ... {} earlier", prefix - shown)?;
        }
        for &op in &self.prefix[prefix - shown..] {
            writeln!(f, "    {}", ShowOp(&self.ops[op]))?;
        }
        writeln!(f, "  none of these fits next:")?;
        for &op in self.candidates.iter().take(SHOW_CANDIDATE_OPS_MAX) {
            writeln!(f, "    {}", ShowOp(&self.ops[op]))?;
        }
        if self.candidates.len() > SHOW_CANDIDATE_OPS_MAX {
            writeln!(f, "    ... {} more", self.candidates.len() - SHOW_CANDIDATE_OPS_MAX)?;
        }
        let later = ops - prefix - self.candidates.len();
        if later > 0 {
            writeln!(f, "  ({later} later operations not shown)")?;
        }
        Ok(())
    }
}

/// One operation on one line: history index, client, ticks, operation.
struct ShowOp<'a>(&'a KeyOp);

impl fmt::Display for ShowOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KeyOp { index, entry } = self.0;
        let (client, invoked_at) = (entry.client, entry.invoked_at);
        write!(f, "#{index} client {client} ticks {invoked_at}..")?;
        match &entry.completion {
            Completion::Returned { at, .. } => write!(f, "{at}: ")?,
            Completion::Unknown => write!(f, "?: ")?,
        }
        match &entry.op {
            Op::Put { value } => write!(f, "put {}", ShowValue(Some(value)))?,
            Op::Get => write!(f, "get")?,
            Op::Delete => write!(f, "delete")?,
            Op::Add { by } => write!(f, "add {by}")?,
        }
        match &entry.completion {
            Completion::Returned { output: Output::Put, .. } => Ok(()),
            Completion::Returned { output: Output::Get(value), .. } => {
                write!(f, " -> {}", ShowValue(value.as_deref()))
            }
            Completion::Returned { output: Output::Delete { existed }, .. } => {
                write!(f, " -> {}", if *existed { "existed" } else { "did not exist" })
            }
            Completion::Returned { output: Output::Added(sum), .. } => write!(f, " -> {sum}"),
            Completion::Unknown => write!(f, " (outcome unknown)"),
        }
    }
}

/// A value as a quoted string if it is printable text, else as hex; cut
/// after [`SHOW_VALUE_BYTES_MAX`] bytes.
pub(super) struct ShowValue<'a>(pub(super) Option<&'a [u8]>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(value) = self.0 else {
            return write!(f, "no value");
        };
        let cut = &value[..value.len().min(SHOW_VALUE_BYTES_MAX)];
        let more = if cut.len() < value.len() { "..." } else { "" };
        match std::str::from_utf8(cut) {
            Ok(text) if !text.chars().any(char::is_control) => write!(f, "{text:?}{more}"),
            _ => {
                write!(f, "0x")?;
                cut.iter().try_for_each(|byte| write!(f, "{byte:02x}"))?;
                write!(f, "{more}")
            }
        }
    }
}
