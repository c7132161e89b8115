//! Path expressions such as `PID-3[2].1`, `OBX[3]-5` and `PID-5.1.2`.

use std::str::FromStr;

/// A parsed path. Positions are 1-based; 0 means "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// Segment id.
    pub segment: [u8; 3],
    /// Segment occurrence (default 1).
    pub occurrence: usize,
    /// Field number.
    pub field: usize,
    /// Repetition (0: first).
    pub repetition: usize,
    /// Component (0: whole repetition).
    pub component: usize,
    /// Subcomponent (0: whole component).
    pub subcomponent: usize,
}

/// A path that does not follow `SEG[n]-F[r].C.S`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HL7 path '{0}'")]
pub struct PathError(pub String);

struct Cursor<'s> {
    s: &'s [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(self.s.get(start..self.i)?).ok()?;
        digits.parse().ok().filter(|&n| n > 0)
    }

    fn bracket(&mut self) -> Option<Option<usize>> {
        if !self.eat(b'[') {
            return Some(None);
        }
        let n = self.number()?;
        self.eat(b']').then_some(Some(n))
    }
}

impl FromStr for Path {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Path, PathError> {
        let err = || PathError(text.to_owned());
        let bytes = text.trim().as_bytes();
        let Some(&[a, b, c]) = bytes.get(..3).and_then(|s| <&[u8; 3]>::try_from(s).ok()) else {
            return Err(err());
        };
        let segment = [a, b, c];
        if !segment.iter().all(|x| x.is_ascii_uppercase() || x.is_ascii_digit()) {
            return Err(err());
        }
        let mut cur = Cursor { s: bytes, i: 3 };
        let occurrence = cur.bracket().ok_or_else(err)?.unwrap_or(1);
        if !(cur.eat(b'-') || cur.eat(b'.')) {
            return Err(err());
        }
        let field = cur.number().ok_or_else(err)?;
        let repetition = cur.bracket().ok_or_else(err)?.unwrap_or(0);
        let mut component = 0;
        let mut subcomponent = 0;
        if cur.eat(b'.') {
            component = cur.number().ok_or_else(err)?;
            if cur.eat(b'.') {
                subcomponent = cur.number().ok_or_else(err)?;
            }
        }
        if cur.i != bytes.len() {
            return Err(err());
        }
        Ok(Path { segment, occurrence, field, repetition, component, subcomponent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p: Path = "PID-3[2].1".parse().unwrap();
        assert_eq!((p.field, p.repetition, p.component, p.subcomponent), (3, 2, 1, 0));
        let p: Path = "OBX[3]-5".parse().unwrap();
        assert_eq!((p.occurrence, p.field), (3, 5));
        let p: Path = "PID-5.1.2".parse().unwrap();
        assert_eq!((p.component, p.subcomponent), (1, 2));
        let p: Path = "PID.5".parse().unwrap();
        assert_eq!(p.field, 5);
        for bad in ["", "PI", "pid-3", "PID", "PID-", "PID-0", "PID-3[", "PID-3[0]", "PID-3.1.2.3", "PID-3x"] {
            assert!(bad.parse::<Path>().is_err(), "{bad}");
        }
    }
}
