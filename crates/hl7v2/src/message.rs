//! Zero-copy ER7 message: segment index, header validation, typed navigation and path access.

use std::borrow::Cow;
use std::ops::Deref;

use memchr::{memchr, memchr_iter, memchr2_iter};

use crate::charset::Charset;
use crate::delim::{DelimiterError, Delimiters};
use crate::error::{ErrorCode, ErrorLocation, ParseError};
use crate::escape::unescape;
use crate::header::Header;
use crate::path::Path;

/// HL7 versions this crate accepts in MSH-12.
pub const SUPPORTED_VERSIONS: [&str; 12] =
    ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"];

/// Delimiters and charset travel together to every slice so that `text()` can decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctx {
    pub(crate) d: Delimiters,
    pub(crate) cs: Charset,
}

/// Splits on one separator with memchr; yields at least one (possibly empty) part.
#[derive(Debug, Clone)]
pub(crate) struct Split<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Split<'a> {
    pub(crate) fn new(s: &'a [u8], sep: u8) -> Self {
        Split { rest: Some(s), sep }
    }
}

/// Finds `sep` in `s`. Most ER7 parts are a few bytes long, where memchr's setup cost
/// dominates, so the first 32 bytes are scanned 8 at a time in a u64 (SWAR); memchr takes over
/// for long values such as embedded documents.
#[inline]
pub(crate) fn find(sep: u8, s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_ne_bytes([1; 8]);
    const HI: u64 = LO << 7;
    const HEAD_CHUNKS: usize = 4;
    let pat = LO * u64::from(sep);
    let (chunks, rest) = s.as_chunks::<8>();
    for (i, c) in chunks.iter().take(HEAD_CHUNKS).enumerate() {
        let x = u64::from_le_bytes(*c) ^ pat;
        // Classic "has zero byte": the lowest flagged byte is always a true match (borrows only
        // cause false flags above a real zero), and little-endian makes it the first in memory.
        let m = x.wrapping_sub(LO) & !x & HI;
        if m != 0 {
            return Some(i * 8 + (m.trailing_zeros() / 8) as usize);
        }
    }
    if chunks.len() > HEAD_CHUNKS {
        let off = HEAD_CHUNKS * 8;
        return memchr(sep, s.get(off..)?).map(|i| i + off);
    }
    let off = chunks.len() * 8;
    rest.iter().position(|&b| b == sep).map(|i| i + off)
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        match find(self.sep, s) {
            Some(i) => {
                let (part, tail) = s.split_at(i);
                self.rest = tail.get(1..);
                Some(part)
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// Returns the 1-based `n`th part, or `None` when absent.
pub(crate) fn nth_part(s: &[u8], sep: u8, n: usize) -> Option<&[u8]> {
    Split::new(s, sep).nth(n.checked_sub(1)?)
}

/// First repetition's `n`th component; empty when absent (header checks only need presence).
pub(crate) fn comp<'a>(field: &'a [u8], d: &Delimiters, n: usize) -> &'a [u8] {
    let rep = Split::new(field, d.repetition).next().unwrap_or_default();
    nth_part(rep, d.component, n).unwrap_or_default()
}

/// Offset within a repetition where the component holding the error starts.
fn cpart_start(rpart: &[u8], cpart: &[u8]) -> usize {
    rpart.len().saturating_sub(cpart.len())
}

fn is_header_id(id: &[u8]) -> bool {
    matches!(id, b"MSH" | b"FHS" | b"BHS")
}

fn valid_id(seg: &[u8], fs: u8) -> bool {
    match seg {
        [a, b, c, rest @ ..] => {
            [a, b, c].iter().all(|x| x.is_ascii_uppercase() || x.is_ascii_digit())
                && rest.first().is_none_or(|&x| x == fs)
        }
        _ => false,
    }
}

/// The segment id as far as it is readable, for error locations: the alphanumeric prefix (at
/// most 3 bytes) so that `PI|...` reports `PI`, or the raw first bytes when there is none.
fn id_text(seg: &[u8]) -> String {
    let id = seg.get(..3).unwrap_or(seg);
    let alnum = id.iter().take_while(|b| b.is_ascii_alphanumeric()).count();
    let id = if alnum > 0 { id.get(..alnum).unwrap_or(id) } else { id };
    String::from_utf8_lossy(id).into_owned()
}

/// Typical messages have a handful of segments; keeping their ranges inline saves the one heap
/// allocation a parse would otherwise need.
const INLINE_SEGMENTS: usize = 8;

/// Segment byte ranges `(start, end)`, end exclusive of the terminator.
#[derive(Debug, Clone)]
pub(crate) enum SegIndex {
    Inline { len: u8, items: [(u32, u32); INLINE_SEGMENTS] },
    Heap(Vec<(u32, u32)>),
}

impl SegIndex {
    #[inline]
    fn push(&mut self, v: (u32, u32)) {
        match self {
            SegIndex::Inline { len, items } => {
                if let Some(slot) = items.get_mut(usize::from(*len)) {
                    *slot = v;
                    *len += 1;
                } else {
                    let mut heap = Vec::with_capacity(INLINE_SEGMENTS * 4);
                    heap.extend_from_slice(items);
                    heap.push(v);
                    *self = SegIndex::Heap(heap);
                }
            }
            SegIndex::Heap(h) => h.push(v),
        }
    }
}

impl Deref for SegIndex {
    type Target = [(u32, u32)];

    #[inline]
    fn deref(&self) -> &[(u32, u32)] {
        match self {
            SegIndex::Inline { len, items } => items.get(..usize::from(*len)).unwrap_or_default(),
            SegIndex::Heap(h) => h,
        }
    }
}

/// Splits `raw` at CR, LF or CRLF; empty and whitespace-only lines are skipped so that trailing
/// blank lines and CRLF pairs don't become segments.
pub(crate) fn index_lines(raw: &[u8]) -> SegIndex {
    let mut segs = SegIndex::Inline { len: 0, items: [(0, 0); INLINE_SEGMENTS] };
    let mut start = 0usize;
    let mut push = |s: usize, e: usize| {
        if let Some(line) = raw.get(s..e)
            && !line.is_empty()
            && !(matches!(line.first(), Some(b' ' | b'\t')) && line.trim_ascii().is_empty())
        {
            // Callers guarantee raw.len() fits in u32, so these casts are lossless.
            segs.push((s as u32, e as u32));
        }
    };
    for pos in memchr2_iter(b'\r', b'\n', raw) {
        push(start, pos);
        start = pos + 1;
    }
    push(start, raw.len());
    segs
}

/// Reads MSH-1/MSH-2 (or FHS/BHS-1/2) from a header segment.
pub(crate) fn header_delimiters(seg: &[u8]) -> Result<Delimiters, ParseError> {
    let Some(&fs) = seg.get(3) else {
        let id = id_text(seg);
        return Err(ParseError::reject(
            ErrorCode::RequiredFieldMissing,
            ErrorLocation::field(&id, 1, 1),
            format!("{id}-1 (field separator) is missing"),
        ));
    };
    let area = seg.get(4..).unwrap_or_default();
    let enc = Split::new(area, fs).next().unwrap_or_default();
    Delimiters::new(fs, enc).map_err(|e| {
        let id = id_text(seg);
        let (field, msg) = match e {
            DelimiterError::BadFieldSeparator => (1, format!("{id}-1 is not a legal field separator")),
            DelimiterError::BadEncodingLength => (2, format!("{id}-2 must hold 4 or 5 encoding characters")),
            DelimiterError::BadEncodingChar(i) => {
                (2, format!("{id}-2 character {} is illegal or duplicates another delimiter", i + 1))
            }
        };
        ParseError::reject(ErrorCode::DataType, ErrorLocation::field(&id, 1, field), msg)
    })
}

/// Fields of a header segment by HL7 number (index 0 and 1 unused, 2 = encoding characters).
pub(crate) fn header_fields<'a>(seg: &'a [u8], d: &Delimiters) -> [&'a [u8]; HEADER_FIELDS] {
    let mut v: [&[u8]; HEADER_FIELDS] = [&[]; HEADER_FIELDS];
    for (slot, part) in v.iter_mut().skip(1).zip(Split::new(seg, d.field)) {
        *slot = part;
    }
    v
}

/// Header fields read by this crate go up to MSH-21; a fixed array avoids an allocation.
pub(crate) const HEADER_FIELDS: usize = 22;

fn msh_err(code: ErrorCode, field: u32, component: u32, msg: String) -> ParseError {
    ParseError::reject(code, ErrorLocation::field("MSH", 1, field).with_component(component), msg)
}

fn is_code(v: &[u8]) -> bool {
    v.len() == 3 && v.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Checks the required MSH fields and returns the declared charset.
fn validate_msh(seg: &[u8], d: &Delimiters) -> Result<Option<Charset>, ParseError> {
    let f = header_fields(seg, d);
    let get = |n: usize| f.get(n).copied().unwrap_or_default();
    let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();

    // Header codes are compared after unescaping: a sender whose delimiters include `.` must escape the dots of
    // its version (`2\S\5\S\1`), and that is still version 2.5.1.
    let un = |v: &[u8]| crate::escape::unescape(v, d).into_owned();
    let msh9 = get(9);
    let (ty, trig) = (un(comp(msh9, d, 1)), un(comp(msh9, d, 2)));
    let (ty, trig) = (ty.as_slice(), trig.as_slice());
    if ty.is_empty() {
        return Err(msh_err(ErrorCode::RequiredFieldMissing, 9, 0, "MSH-9 (message type) is missing".into()));
    }
    if !is_code(ty) {
        return Err(msh_err(
            ErrorCode::UnsupportedMessageType,
            9,
            1,
            format!("message type '{}' is not a 3-character code", show(ty)),
        ));
    }
    if trig.is_empty() && ty != b"ACK" {
        return Err(msh_err(ErrorCode::RequiredFieldMissing, 9, 2, "MSH-9.2 (trigger event) is missing".into()));
    }
    if !trig.is_empty() && !is_code(trig) {
        return Err(msh_err(
            ErrorCode::UnsupportedEventCode,
            9,
            2,
            format!("trigger event '{}' is not a 3-character code", show(trig)),
        ));
    }
    if get(10).is_empty() {
        return Err(msh_err(ErrorCode::RequiredFieldMissing, 10, 0, "MSH-10 (message control id) is missing".into()));
    }
    let pid = un(comp(get(11), d, 1));
    let pid = pid.as_slice();
    if pid.is_empty() {
        return Err(msh_err(ErrorCode::RequiredFieldMissing, 11, 0, "MSH-11 (processing id) is missing".into()));
    }
    if !matches!(pid, b"P" | b"D" | b"T") {
        return Err(msh_err(
            ErrorCode::UnsupportedProcessingId,
            11,
            0,
            format!("processing id '{}' is not P, D or T", show(pid)),
        ));
    }
    let ver = un(comp(get(12), d, 1));
    let ver = ver.as_slice();
    if ver.is_empty() {
        return Err(msh_err(ErrorCode::RequiredFieldMissing, 12, 0, "MSH-12 (version id) is missing".into()));
    }
    if !SUPPORTED_VERSIONS.iter().any(|v| v.as_bytes() == ver) {
        return Err(msh_err(
            ErrorCode::UnsupportedVersionId,
            12,
            0,
            format!("version '{}' is not supported (2.2 to 2.8.2)", show(ver)),
        ));
    }
    for n in [15u32, 16] {
        let v = un(get(n as usize));
        let v = v.as_slice();
        if !v.is_empty() && !matches!(v, b"AL" | b"NE" | b"ER" | b"SU") {
            return Err(msh_err(
                ErrorCode::TableValueNotFound,
                n,
                0,
                format!("MSH-{n} '{}' is not AL, NE, ER or SU", show(v)),
            ));
        }
    }
    let cs = un(Split::new(get(18), d.repetition).next().unwrap_or_default());
    Charset::from_hl7(&cs).map_err(|()| {
        msh_err(ErrorCode::TableValueNotFound, 18, 0, format!("character set '{}' is not supported", show(&cs)))
    })
}

/// A parsed message borrowing the input bytes. Parsing builds only a segment index; fields are
/// split on access.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    ctx: Ctx,
    declared: Option<Charset>,
    segs: SegIndex,
}

impl<'a> Message<'a> {
    /// Parses and validates one ER7 message (no MLLP framing).
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if u32::try_from(raw.len()).is_err() {
            return Err(ParseError::reject(
                ErrorCode::ApplicationInternalError,
                ErrorLocation::segment("MSH", 1),
                "message larger than 4 GiB",
            ));
        }
        let segs = index_lines(raw);
        let msh = segs.first().and_then(|&(s, e)| raw.get(s as usize..e as usize)).unwrap_or_default();
        if !msh.starts_with(b"MSH") {
            let why = if msh.starts_with(b"FHS") || msh.starts_with(b"BHS") {
                "input is a batch; use Batch::parse"
            } else {
                "message does not start with an MSH segment"
            };
            return Err(ParseError::reject(ErrorCode::SegmentSequence, ErrorLocation::segment("MSH", 1), why));
        }
        let d = header_delimiters(msh)?;
        let declared = validate_msh(msh, &d)?;
        let mut msg = Message { raw, ctx: Ctx { d, cs: declared.unwrap_or(Charset::Utf8) }, declared, segs };
        for i in 1..msg.segs.len() {
            let seg = msg.segment_at(i).map(|s| s.raw).unwrap_or_default();
            if !valid_id(seg, d.field) {
                return Err(ParseError::error(
                    ErrorCode::SegmentSequence,
                    msg.segment_location(i),
                    format!("'{}' is not a valid segment id", id_text(seg).escape_default()),
                ));
            }
            if matches!(seg.get(..3), Some(b"MSH" | b"FHS" | b"BHS" | b"BTS" | b"FTS")) {
                return Err(ParseError::error(
                    ErrorCode::SegmentSequence,
                    msg.segment_location(i),
                    "header or batch segment inside a message",
                ));
            }
        }
        if matches!(declared, None | Some(Charset::Ascii | Charset::Utf8))
            && let Err(e) = std::str::from_utf8(raw)
        {
            if declared == Some(Charset::Utf8) {
                return Err(msg.content_error(e.valid_up_to(), "invalid UTF-8 under MSH-18 UNICODE UTF-8"));
            }
            // Undeclared (or mislabelled ASCII) non-UTF-8 bytes are almost always Latin-1.
            msg.ctx.cs = Charset::Latin1;
        }
        if let Some(pos) = memchr(0, raw) {
            return Err(msg.content_error(pos, "NUL byte in message"));
        }
        Ok(msg)
    }

    fn content_error(&self, offset: usize, why: &str) -> ParseError {
        let loc = self.locate(offset);
        if loc.segment == "MSH" {
            ParseError::reject(ErrorCode::DataType, loc, why)
        } else {
            ParseError::error(ErrorCode::DataType, loc, why)
        }
    }

    fn segment_location(&self, idx: usize) -> ErrorLocation {
        let id = self.segment_at(idx).map(|s| id_text(s.raw)).unwrap_or_default();
        let seq = self.segments().take(idx + 1).filter(|s| s.raw.get(..3) == id.as_bytes().get(..3)).count();
        ErrorLocation::segment(&id, u32::try_from(seq).unwrap_or(u32::MAX))
    }

    /// Maps a byte offset to an ERR-2 location.
    pub fn locate(&self, offset: usize) -> ErrorLocation {
        let idx = self.segs.partition_point(|&(_, e)| e as usize <= offset);
        let mut loc = self.segment_location(idx.min(self.segs.len().saturating_sub(1)));
        let Some(&(s, _)) = self.segs.get(idx) else {
            return loc;
        };
        let Some(seg) = self.segment_at(idx) else {
            return loc;
        };
        let d = self.ctx.d;
        let within = offset.saturating_sub(s as usize);
        let prefix = seg.raw.get(..within).unwrap_or(seg.raw);
        let fields = memchr_iter(d.field, prefix).count();
        if fields == 0 {
            return loc;
        }
        let header = is_header_id(seg.raw.get(..3).unwrap_or_default());
        let count = |s: &[u8], c: u8| u32::try_from(memchr_iter(c, s).count()).unwrap_or(u32::MAX);
        loc.field = u32::try_from(fields + usize::from(header)).unwrap_or(u32::MAX);
        if header && loc.field == 2 {
            return loc;
        }
        let fpart = Split::new(prefix, d.field).last().unwrap_or_default();
        let rpart = Split::new(fpart, d.repetition).last().unwrap_or_default();
        let cpart = Split::new(rpart, d.component).last().unwrap_or_default();
        loc.repetition = count(fpart, d.repetition) + 1;
        // Only name components/subcomponents when the value actually has them, so a plain
        // field is reported as `OBX-5` rather than `OBX-5.1.1`.
        let value = seg.raw.get(within.saturating_sub(rpart.len())..).unwrap_or_default();
        let value = Split::new(value, d.field).next().unwrap_or_default();
        let value = Split::new(value, d.repetition).next().unwrap_or_default();
        if memchr(d.component, value).is_some() {
            loc.component = count(rpart, d.component) + 1;
            let cvalue = value.get(cpart_start(rpart, cpart)..).unwrap_or_default();
            let cvalue = Split::new(cvalue, d.component).next().unwrap_or_default();
            if memchr(d.subcomponent, cvalue).is_some() {
                loc.subcomponent = count(cpart, d.subcomponent) + 1;
            }
        } else if memchr(d.subcomponent, value).is_some() {
            loc.component = 1;
            loc.subcomponent = count(cpart, d.subcomponent) + 1;
        }
        loc
    }

    /// The input bytes, exactly as given (original segment terminators included).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Re-encodes the message. Parsing keeps the original bytes, so this is byte-identical to
    /// the input.
    pub fn encode(&self) -> Vec<u8> {
        self.raw.to_vec()
    }

    /// Delimiters from MSH-1/MSH-2.
    pub fn delimiters(&self) -> Delimiters {
        self.ctx.d
    }

    /// Charset used to decode text (declared in MSH-18, or detected when MSH-18 is empty).
    pub fn charset(&self) -> Charset {
        self.ctx.cs
    }

    /// Charset declared in MSH-18, if any.
    pub fn declared_charset(&self) -> Option<Charset> {
        self.declared
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    fn segment_at(&self, i: usize) -> Option<Segment<'a>> {
        let &(s, e) = self.segs.get(i)?;
        Some(Segment { raw: self.raw.get(s as usize..e as usize)?, ctx: self.ctx })
    }

    /// All segments in order.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = Segment<'a>> + '_ {
        let (raw, ctx) = (self.raw, self.ctx);
        self.segs.iter().map(move |&(s, e)| Segment { raw: raw.get(s as usize..e as usize).unwrap_or_default(), ctx })
    }

    /// Segments with the given id.
    pub fn segments_named<'s>(&'s self, id: &'s str) -> impl Iterator<Item = Segment<'a>> + 's {
        self.segments().filter(move |s| s.raw.get(..3) == Some(id.as_bytes()))
    }

    /// The `occurrence`th (1-based) segment with the given id.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'a>> {
        self.segments_named(id).nth(occurrence.checked_sub(1)?)
    }

    /// The MSH segment.
    pub fn msh(&self) -> Segment<'a> {
        self.segment_at(0).unwrap_or(Segment { raw: &[], ctx: self.ctx })
    }

    /// Value at a path like `PID-3[2].1`, `OBX[3]-5` or `PID-5.1.2`; `None` when the path is
    /// invalid or the item is not present. Without `[r]` the first repetition is used.
    pub fn get(&self, path: &str) -> Option<Value<'a>> {
        self.get_path(&path.parse::<Path>().ok()?)
    }

    /// Decoded text at a path (see [`Message::get`]).
    pub fn text(&self, path: &str) -> Option<Cow<'a, str>> {
        self.get(path).map(|v| v.text())
    }

    /// Value at a pre-parsed path.
    pub fn get_path(&self, p: &Path) -> Option<Value<'a>> {
        let seg =
            self.segments().filter(|s| s.raw.get(..3) == Some(&p.segment[..])).nth(p.occurrence.checked_sub(1)?)?;
        let rep = seg.field(p.field)?.repetition(p.repetition.max(1))?;
        if p.component == 0 {
            return Some(rep.0);
        }
        let c = rep.component(p.component)?;
        if p.subcomponent == 0 {
            return Some(c.0);
        }
        c.subcomponent(p.subcomponent).map(|s| s.0)
    }

    /// Header fields (MSH) decoded.
    pub fn header(&self) -> Header {
        Header::from_msh(self.msh().raw, self.ctx.d, self.declared, self.ctx.cs, false)
    }
}

/// One segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    raw: &'a [u8],
    ctx: Ctx,
}

impl<'a> Segment<'a> {
    pub(crate) fn new(raw: &'a [u8], d: Delimiters, cs: Charset) -> Self {
        Segment { raw, ctx: Ctx { d, cs } }
    }

    /// Three-character segment id.
    pub fn id(&self) -> &'a str {
        self.raw.get(..3).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    /// Segment bytes without terminator.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Fields from field 1 on. For MSH/FHS/BHS field 1 is the field separator and field 2 the
    /// encoding characters, both taken literally.
    pub fn fields(&self) -> Fields<'a> {
        let mut split = Split::new(self.raw, self.ctx.d.field);
        split.next();
        let header = is_header_id(self.raw.get(..3).unwrap_or_default());
        Fields { split, ctx: self.ctx, separator: if header { self.raw.get(3..4) } else { None }, literal_next: header }
    }

    /// Field `n` (1-based); `None` when the segment has fewer fields.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        self.fields().nth(n.checked_sub(1)?)
    }

    /// Number of fields present.
    pub fn field_count(&self) -> usize {
        self.fields().count()
    }
}

/// Iterator over a segment's fields.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    split: Split<'a>,
    ctx: Ctx,
    separator: Option<&'a [u8]>,
    literal_next: bool,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    #[inline]
    fn next(&mut self) -> Option<Field<'a>> {
        if let Some(sep) = self.separator.take() {
            return Some(Field(Value::new(sep, self.ctx, true)));
        }
        let raw = self.split.next()?;
        let literal = std::mem::take(&mut self.literal_next);
        Some(Field(Value::new(raw, self.ctx, literal)))
    }
}

/// A slice of a message at any level, with decoding.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    raw: &'a [u8],
    ctx: Ctx,
    literal: bool,
}

impl<'a> Value<'a> {
    fn new(raw: &'a [u8], ctx: Ctx, literal: bool) -> Self {
        Value { raw, ctx, literal }
    }

    /// Bytes as they appear in the message.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Text with escape sequences decoded and the charset converted to UTF-8.
    pub fn text(&self) -> Cow<'a, str> {
        if self.literal {
            return self.ctx.cs.decode(Cow::Borrowed(self.raw));
        }
        self.ctx.cs.decode(unescape(self.raw, &self.ctx.d))
    }

    /// True when nothing is valued here (HL7 "not present").
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// True for the explicit null `""` (HL7 "delete this value").
    pub fn is_null(&self) -> bool {
        self.raw == b"\"\""
    }

    /// Delimiters of the enclosing message.
    pub fn delimiters(&self) -> Delimiters {
        self.ctx.d
    }

    fn parts(&self, sep: u8) -> Parts<'a> {
        Parts { split: Split::new(self.raw, sep), ctx: self.ctx, literal: self.literal }
    }
}

/// Sub-parts of a value at the next level down.
#[derive(Debug, Clone)]
struct Parts<'a> {
    split: Split<'a>,
    ctx: Ctx,
    literal: bool,
}

impl<'a> Iterator for Parts<'a> {
    type Item = Value<'a>;

    #[inline]
    fn next(&mut self) -> Option<Value<'a>> {
        // Literal values (MSH-1, MSH-2) contain the delimiters themselves and must not be split.
        let raw = if self.literal { self.split.rest.take()? } else { self.split.next()? };
        Some(Value::new(raw, self.ctx, self.literal))
    }
}

macro_rules! level {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a>(Value<'a>);

        impl<'a> Deref for $name<'a> {
            type Target = Value<'a>;
            fn deref(&self) -> &Value<'a> {
                &self.0
            }
        }

        impl<'a> $name<'a> {
            /// The level-independent value.
            pub fn value(&self) -> Value<'a> {
                self.0
            }
        }
    };
}

level!(
    /// A field (all repetitions).
    Field
);
level!(
    /// One repetition of a field.
    Repetition
);
level!(
    /// A component of a repetition.
    Component
);
level!(
    /// A subcomponent.
    Subcomponent
);

impl<'a> Field<'a> {
    /// Repetitions (at least one, possibly empty).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + use<'a> {
        self.0.parts(self.0.ctx.d.repetition).map(Repetition)
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Repetition<'a>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.repetition(1)?.component(n)
    }
}

impl<'a> Repetition<'a> {
    /// Components (at least one).
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'a> {
        self.0.parts(self.0.ctx.d.component).map(Component)
    }

    /// Component `n` (1-based).
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.components().nth(n.checked_sub(1)?)
    }
}

impl<'a> Component<'a> {
    /// Subcomponents (at least one).
    pub fn subcomponents(&self) -> impl Iterator<Item = Subcomponent<'a>> + use<'a> {
        self.0.parts(self.0.ctx.d.subcomponent).map(Subcomponent)
    }

    /// Subcomponent `n` (1-based).
    pub fn subcomponent(&self, n: usize) -> Option<Subcomponent<'a>> {
        self.subcomponents().nth(n.checked_sub(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] = b"MSH|^~\\&|APP^1.2^ISO|FAC|RCV|RFAC|20240101||ADT^A01^ADT_A01|C1|P|2.5.1\r\
EVN|A01\rPID|1||A1^^^X^MR~B2^^^Y^SS||Doe&Van&Doe^Jane||\"\"||\rOBX|1\rOBX|2|ST|c||v2\r";

    proptest::proptest! {
        #[test]
        fn find_matches_naive(s in proptest::collection::vec(proptest::sample::select(b"|^~&ab\x80\xff\x00".to_vec()), 0..80), sep in proptest::sample::select(b"|^~&\xff".to_vec())) {
            proptest::prop_assert_eq!(find(sep, &s), s.iter().position(|&b| b == sep));
        }
    }

    #[test]
    fn typed_navigation() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segment_count(), 5);
        let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "EVN", "PID", "OBX", "OBX"]);
        let msh = m.msh();
        assert_eq!(msh.field(1).unwrap().raw(), b"|");
        assert_eq!(msh.field(2).unwrap().raw(), b"^~\\&");
        assert_eq!(msh.field(2).unwrap().repetitions().count(), 1);
        assert_eq!(msh.field(3).unwrap().component(2).unwrap().text(), "1.2");
        let pid = m.segment("PID", 1).unwrap();
        let f3 = pid.field(3).unwrap();
        assert_eq!(f3.repetitions().count(), 2);
        assert_eq!(f3.repetition(2).unwrap().component(5).unwrap().text(), "SS");
        let name = pid.field(5).unwrap().component(1).unwrap();
        assert_eq!(name.subcomponent(2).unwrap().text(), "Van");
        assert_eq!(name.subcomponents().count(), 3);
        assert!(pid.field(7).unwrap().is_null());
        assert!(pid.field(8).unwrap().is_empty() && !pid.field(8).unwrap().is_null());
        assert!(pid.field(30).is_none());
        assert_eq!(m.segment("OBX", 2).unwrap().field(5).unwrap().text(), "v2");
    }

    #[test]
    fn paths() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.text("PID-3[2].1").unwrap(), "B2");
        assert_eq!(m.text("PID-3").unwrap(), "A1^^^X^MR");
        assert_eq!(m.text("PID-5.1.3").unwrap(), "Doe");
        assert_eq!(m.text("OBX[2]-5").unwrap(), "v2");
        assert_eq!(m.text("MSH-9.2").unwrap(), "A01");
        assert!(m.get("OBX[3]-5").is_none());
        assert!(m.get("bogus").is_none());
        let h = m.header();
        assert_eq!((h.message_type.as_str(), h.trigger_event.as_str()), ("ADT", "A01"));
        assert_eq!(h.message_structure, "ADT_A01");
        assert_eq!(h.sending_application, "APP");
        assert!(!h.enhanced_mode());
    }

    #[test]
    fn terminators_and_round_trip() {
        for term in ["\r", "\n", "\r\n"] {
            let text = format!("MSH|^~\\&|A||||||ADT^A01|1|P|2.4{term}PID|1{term}{term}");
            let m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(m.segment_count(), 2);
            assert_eq!(m.encode(), text.as_bytes());
            assert_eq!(m.as_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn charsets() {
        let m = Message::parse(b"MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||||M\xfcller").unwrap();
        assert_eq!(m.charset(), Charset::Latin1);
        assert_eq!(m.text("PID-5").unwrap(), "Müller");
        let m = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||||Müller".as_bytes()).unwrap();
        assert_eq!(m.charset(), Charset::Utf8);
        assert_eq!(m.declared_charset(), None);
        let e = Message::parse(b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||x^\xff").unwrap_err();
        assert_eq!(e.location.to_string(), "PID-3.2");
        assert!(!e.is_reject());
    }

    #[test]
    fn header_errors() {
        let cases: [(&[u8], u16, &str); 6] = [
            (b"", 100, "MSH"),
            (b"MSH|^~\\&|||||||ADT^A01||P|2.5", 101, "MSH-10"),
            (b"MSH|^~\\&|||||||ADT^A01|1|P|2.9", 203, "MSH-12"),
            (b"MSH|^~\\&|||||||ADT^A01|1|Q|2.5", 202, "MSH-11"),
            (b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||X", 103, "MSH-18"),
            (b"FHS|^~\\&", 100, "MSH"),
        ];
        for (raw, code, loc) in cases {
            let e = Message::parse(raw).unwrap_err();
            assert_eq!((e.code.code(), e.location.to_string().as_str()), (code, loc));
            assert!(e.is_reject());
        }
        let e = Message::parse(b"MSH|^~\\&|||||||ACK|1|P|2.2\rMSA|AA|9").map(|m| m.header().message_type);
        assert_eq!(e.unwrap(), "ACK");
    }

    #[test]
    fn locate_positions() {
        let m = Message::parse(ADT).unwrap();
        let pos = ADT.windows(3).position(|w| w == b"Van").unwrap();
        let loc = m.locate(pos);
        assert_eq!(loc.to_string(), "PID-5.1.2");
        let loc = m.locate(5);
        assert_eq!(loc.to_string(), "MSH-2");
    }
}
