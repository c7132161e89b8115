//! HL7 batch files: `[FHS] {BHS {MSH...} BTS} [FTS]` split into individually parsed messages.

use crate::charset::Charset;
use crate::delim::Delimiters;
use crate::error::{ErrorCode, ErrorLocation, ParseError};
use crate::message::{Message, Segment, header_delimiters, index_lines};

/// One BHS..BTS group.
#[derive(Debug, Clone)]
pub struct BatchGroup<'a> {
    /// The BHS segment.
    pub header: Segment<'a>,
    /// The BTS segment, if present.
    pub trailer: Option<Segment<'a>>,
    /// Each message in order; a bad message does not spoil its neighbours.
    pub messages: Vec<Result<Message<'a>, ParseError>>,
}

/// A parsed batch file.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    raw: &'a [u8],
    d: Delimiters,
    file_header: Option<Segment<'a>>,
    file_trailer: Option<Segment<'a>>,
    groups: Vec<BatchGroup<'a>>,
}

fn reject(code: ErrorCode, seg: &str, seq: usize, field: u32, msg: impl Into<String>) -> ParseError {
    let seq = u32::try_from(seq).unwrap_or(u32::MAX);
    ParseError::reject(code, ErrorLocation::field(seg, seq, field), msg)
}

/// Checks a trailer's count field (BTS-1 / FTS-1) when it is valued.
fn check_count(trailer: Segment<'_>, actual: usize, seq: usize) -> Result<(), ParseError> {
    let Some(f) = trailer.field(1).filter(|f| !f.is_empty()) else {
        return Ok(());
    };
    let text = f.text();
    match text.trim().parse::<usize>() {
        Ok(n) if n == actual => Ok(()),
        Ok(n) => Err(reject(
            ErrorCode::DataType,
            trailer.id(),
            seq,
            1,
            format!("{}-1 says {n} but {actual} found", trailer.id()),
        )),
        Err(_) => Err(reject(ErrorCode::DataType, trailer.id(), seq, 1, format!("{}-1 is not a number", trailer.id()))),
    }
}

impl<'a> Batch<'a> {
    /// Parses a batch. Structural problems (missing BHS, wrong BTS-1/FTS-1 counts, segments
    /// outside messages) reject the whole batch; each message's own errors stay in its entry.
    pub fn parse(raw: &'a [u8]) -> Result<Batch<'a>, ParseError> {
        if u32::try_from(raw.len()).is_err() {
            return Err(reject(ErrorCode::ApplicationInternalError, "BHS", 1, 0, "batch larger than 4 GiB"));
        }
        let lines = index_lines(raw);
        let line = |i: usize| lines.get(i).and_then(|&(s, e)| raw.get(s as usize..e as usize)).unwrap_or_default();
        let id = |i: usize| line(i).get(..3).unwrap_or_default();
        let first = line(0);
        if !matches!(id(0), b"FHS" | b"BHS") {
            return Err(reject(ErrorCode::SegmentSequence, "BHS", 1, 0, "batch must start with FHS or BHS"));
        }
        let d = header_delimiters(first)?;
        let cs = if std::str::from_utf8(raw).is_ok() { Charset::Utf8 } else { Charset::Latin1 };
        let seg = |i: usize| Segment::new(line(i), d, cs);
        let mut batch = Batch { raw, d, file_header: None, file_trailer: None, groups: Vec::new() };
        let mut open: Option<BatchGroup<'a>> = None;
        let mut i = 0;
        while i < lines.len() {
            match id(i) {
                b"FHS" if i == 0 => {
                    batch.file_header = Some(seg(i));
                    if i + 1 < lines.len() && id(i + 1) != b"BHS" {
                        let found = String::from_utf8_lossy(id(i + 1)).into_owned();
                        return Err(reject(
                            ErrorCode::SegmentSequence,
                            "BHS",
                            1,
                            0,
                            format!("expected BHS after FHS, found '{found}'"),
                        ));
                    }
                }
                b"BHS" => {
                    if let Some(g) = open.take() {
                        batch.groups.push(g);
                    }
                    open = Some(BatchGroup { header: seg(i), trailer: None, messages: Vec::new() });
                }
                b"MSH" => {
                    let Some(g) = open.as_mut() else {
                        return Err(reject(ErrorCode::SegmentSequence, "BHS", 1, 0, "message outside BHS/BTS"));
                    };
                    let end = (i + 1..lines.len())
                        .find(|&j| matches!(id(j), b"MSH" | b"BHS" | b"BTS" | b"FHS" | b"FTS"))
                        .unwrap_or(lines.len());
                    let from = lines.get(i).map_or(0, |&(s, _)| s as usize);
                    let to = lines.get(end).map_or(raw.len(), |&(s, _)| s as usize);
                    let bytes = raw.get(from..to).unwrap_or_default();
                    g.messages.push(Message::parse(bytes));
                    i = end;
                    continue;
                }
                b"BTS" => {
                    let Some(mut g) = open.take() else {
                        return Err(reject(ErrorCode::SegmentSequence, "BTS", 1, 0, "BTS without BHS"));
                    };
                    let trailer = seg(i);
                    check_count(trailer, g.messages.len(), batch.groups.len() + 1)?;
                    g.trailer = Some(trailer);
                    batch.groups.push(g);
                }
                b"FTS" => {
                    if let Some(g) = open.take() {
                        batch.groups.push(g);
                    }
                    let trailer = seg(i);
                    check_count(trailer, batch.groups.len(), 1)?;
                    batch.file_trailer = Some(trailer);
                    if i + 1 < lines.len() {
                        return Err(reject(ErrorCode::SegmentSequence, "FTS", 1, 0, "segments after FTS"));
                    }
                }
                other => {
                    let found = String::from_utf8_lossy(other).into_owned();
                    return Err(reject(
                        ErrorCode::SegmentSequence,
                        &found,
                        1,
                        0,
                        format!("segment '{found}' outside a message"),
                    ));
                }
            }
            i += 1;
        }
        if let Some(g) = open.take() {
            batch.groups.push(g);
        }
        Ok(batch)
    }

    /// Input bytes as given.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Delimiters of the FHS/BHS.
    pub fn delimiters(&self) -> Delimiters {
        self.d
    }

    /// FHS, if present.
    pub fn file_header(&self) -> Option<Segment<'a>> {
        self.file_header
    }

    /// FTS, if present.
    pub fn file_trailer(&self) -> Option<Segment<'a>> {
        self.file_trailer
    }

    /// BHS..BTS groups.
    pub fn groups(&self) -> &[BatchGroup<'a>] {
        &self.groups
    }

    /// The first BHS.
    pub fn batch_header(&self) -> Option<Segment<'a>> {
        self.groups.first().map(|g| g.header)
    }

    /// Every message entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = &Result<Message<'a>, ParseError>> {
        self.groups.iter().flat_map(|g| g.messages.iter())
    }

    /// Messages that parsed.
    pub fn messages(&self) -> impl Iterator<Item = &Message<'a>> {
        self.entries().filter_map(|r| r.as_ref().ok())
    }

    /// Number of message entries (parsed or not).
    pub fn message_count(&self) -> usize {
        self.groups.iter().map(|g| g.messages.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "MSH|^~\\&|A|B|C|D|2024||ADT^A04|{}|P|2.5\rPID|1||{}\r";

    fn msg(id: &str) -> String {
        MSG.replace("{}", id)
    }

    #[test]
    fn full_batch() {
        let raw = format!("FHS|^~\\&|A\rBHS|^~\\&|A\r{}{}BTS|2\rFTS|1\r", msg("1"), msg("2"));
        let b = Batch::parse(raw.as_bytes()).unwrap();
        assert_eq!(b.message_count(), 2);
        let ids: Vec<_> = b.messages().map(|m| m.header().control_id).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(b.file_header().unwrap().field(3).unwrap().text(), "A");
        assert!(b.file_trailer().is_some());
    }

    #[test]
    fn wrong_count_and_missing_bhs() {
        let raw = format!("BHS|^~\\&\r{}BTS|3\r", msg("1"));
        let e = Batch::parse(raw.as_bytes()).unwrap_err();
        assert_eq!(e.location.to_string(), "BTS-1");
        assert!(e.is_reject());
        let raw = format!("FHS|^~\\&\r{}FTS|1\r", msg("1"));
        let e = Batch::parse(raw.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::SegmentSequence);
        assert_eq!(e.location.to_string(), "BHS");
    }

    #[test]
    fn bad_message_kept_as_error() {
        let raw = format!("BHS|^~\\&\r{}MSH|^~\\&|x\rBTS|2\r", msg("1"));
        let b = Batch::parse(raw.as_bytes()).unwrap();
        assert_eq!(b.message_count(), 2);
        assert_eq!(b.messages().count(), 1);
    }
}
