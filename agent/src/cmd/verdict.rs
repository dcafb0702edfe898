//! The job-level lines every explain prints before its chains: the
//! straggler (from collectives, else synchronize waits, with a note when
//! they disagree) and each hung collective with what its missing ranks are
//! doing. Local, merged and fleet explain and the MCP tools print these
//! same lines; the verdicts themselves come from the engine
//! ([`crate::analysis::findings`]).

use crate::analysis::Comparison;

/// Text and exit-code facts of a comparison's verdicts.
#[derive(Debug)]
pub struct VerdictText {
    /// Lines to print, each ending with a newline; empty when there is
    /// nothing to say.
    pub text: String,
    /// A hung collective was found (confirmed, not merely possible).
    pub hung: bool,
}

/// Exit code of an explain that found a hung collective.
pub const EXIT_HANG: u8 = 5;

/// The verdict lines of `comparison`, traced strings made printable.
#[must_use]
pub fn verdict_text(comparison: &Comparison) -> VerdictText {
    let mut text = String::new();
    for line in comparison.straggler_lines() {
        text.push_str(&crate::text::sanitize(&line, 4000));
        text.push('\n');
    }
    let mut hung = false;
    if let Some(c) = &comparison.collectives {
        for (hang, missing) in c.hangs.iter().zip(&c.missing_activity) {
            hung |= hang.confirmed;
            text.push_str(&crate::text::sanitize(&hang.headline(), 4000));
            text.push('\n');
            for line in missing {
                text.push_str("  ");
                text.push_str(&crate::text::sanitize(line, 4000));
                text.push('\n');
            }
        }
    }
    VerdictText { text, hung }
}
