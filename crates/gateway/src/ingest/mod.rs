//! HL7 v2 ingest: MLLP frames in, journal (group commit) and standard acknowledgments out.

pub mod commit;
pub mod handler;
pub mod policy;

pub use commit::{CommitError, CommitSettings, GroupCommitter};
pub use handler::IngestService;
pub use policy::AcceptPolicy;
