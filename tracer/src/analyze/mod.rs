//! What the verbs that are not a live view conclude from a trace or a snapshot: `inspect`'s static
//! path of a container, `verify`'s checks of one probe, `diff`'s changes between two captures.
//! Each builds plain data that `render` prints in any format; none prints.

pub(crate) mod diff;
pub(crate) mod inspect;
pub(crate) mod verify;
