//! A small FHIRPath interpreter covering exactly the subset the R4 SearchParameter expressions use.
//!
//! Supported: path navigation over `serde_json::Value` (arrays flatten), choice elements (`value` finds
//! `valueQuantity`, `valueCodeableConcept`, ... and remembers the type), `ofType(T)` / `as(T)` / `is(T)` and the
//! `as` / `is` operators, `where(...)`, `exists()`, `empty()`, `not()`, `first()`, `last()`, `resolve()` (type
//! only: there is no database here), `extension('url')`, `$this`, string / number / boolean literals, `=` / `!=`,
//! `and` / `or` and `|` union. Anything else is rejected by [`parse`], so unsupported definitions are found when
//! the registry loads, never silently while indexing.
//!
//! Evaluation never fails: FHIRPath's answer to data that does not fit is the empty collection.

use std::fmt;

use serde_json::Value;

/// Parenthesis nesting beyond this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ParseError {
    #[error("unexpected end of expression")]
    UnexpectedEnd,
    #[error("unexpected {found:?} at offset {offset}")]
    Unexpected { found: String, offset: usize },
    #[error("unsupported FHIRPath construct: {0}")]
    Unsupported(String),
    #[error("expression nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Number(f64),
    Boolean(bool),
}

/// Functions of the supported subset; the parser refuses every other name.
#[derive(Debug, Clone, PartialEq)]
pub enum Function {
    Where(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    Not,
    First,
    Last,
    OfType(String),
    As(String),
    Is(String),
    Resolve,
    Extension(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A capitalised name at the start of a path is a type filter on the focus (`Patient.name`); otherwise a member.
    Identifier(String),
    This,
    Literal(Literal),
    Member(Box<Expr>, String),
    /// A call without a base is invoked on the focus (`where(resolve() is Patient)`).
    Call(Option<Box<Expr>>, Function),
    /// Kept so that per-type expressions render back the way the definitions wrote them.
    Paren(Box<Expr>),
    Union(Box<Expr>, Box<Expr>),
    Equal(Box<Expr>, Box<Expr>),
    NotEqual(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    As(Box<Expr>, String),
    Is(Box<Expr>, String),
}

impl Expr {
    /// The branches of a top-level union, in order (`A.x | (B.y as Quantity)` gives two).
    pub fn union_branches(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        collect_branches(self, &mut out);
        out
    }

    /// The type name a path starts from (`Observation` for `(Observation.value as Quantity).unit`), if any.
    pub fn root_type(&self) -> Option<&str> {
        match self {
            Expr::Identifier(name) if starts_upper(name) => Some(name),
            Expr::Identifier(_) | Expr::This | Expr::Literal(_) => None,
            Expr::Member(base, _) | Expr::Paren(base) | Expr::As(base, _) | Expr::Is(base, _) => base.root_type(),
            Expr::Call(Some(base), _) => base.root_type(),
            Expr::Call(None, _) => None,
            Expr::Union(a, _) | Expr::Equal(a, _) | Expr::NotEqual(a, _) | Expr::And(a, _) | Expr::Or(a, _) => {
                a.root_type()
            }
        }
    }

    /// Joins branches back into one union; `None` for no branch.
    pub fn union_of(branches: Vec<Expr>) -> Option<Expr> {
        branches.into_iter().reduce(|acc, b| Expr::Union(Box::new(acc), Box::new(b)))
    }
}

fn collect_branches<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Union(a, b) => {
            collect_branches(a, out);
            collect_branches(b, out);
        }
        Expr::Paren(inner) if matches!(**inner, Expr::Union(..)) => collect_branches(inner, out),
        other => out.push(other),
    }
}

fn starts_upper(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Identifier(name) => f.write_str(name),
            Expr::This => f.write_str("$this"),
            Expr::Literal(Literal::String(s)) => write!(f, "'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            Expr::Literal(Literal::Number(n)) => write!(f, "{n}"),
            Expr::Literal(Literal::Boolean(b)) => write!(f, "{b}"),
            Expr::Member(base, name) => write!(f, "{base}.{name}"),
            Expr::Call(base, func) => {
                if let Some(base) = base {
                    write!(f, "{base}.")?;
                }
                match func {
                    Function::Where(c) => write!(f, "where({c})"),
                    Function::Exists(Some(c)) => write!(f, "exists({c})"),
                    Function::Exists(None) => f.write_str("exists()"),
                    Function::Empty => f.write_str("empty()"),
                    Function::Not => f.write_str("not()"),
                    Function::First => f.write_str("first()"),
                    Function::Last => f.write_str("last()"),
                    Function::OfType(t) => write!(f, "ofType({t})"),
                    Function::As(t) => write!(f, "as({t})"),
                    Function::Is(t) => write!(f, "is({t})"),
                    Function::Resolve => f.write_str("resolve()"),
                    Function::Extension(url) => write!(f, "extension('{}')", url.replace('\'', "\\'")),
                }
            }
            Expr::Paren(inner) => write!(f, "({inner})"),
            Expr::Union(a, b) => write!(f, "{a} | {b}"),
            Expr::Equal(a, b) => write!(f, "{a} = {b}"),
            Expr::NotEqual(a, b) => write!(f, "{a} != {b}"),
            Expr::And(a, b) => write!(f, "{a} and {b}"),
            Expr::Or(a, b) => write!(f, "{a} or {b}"),
            Expr::As(a, t) => write!(f, "{a} as {t}"),
            Expr::Is(a, t) => write!(f, "{a} is {t}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Lexer and parser
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    This,
    Dot,
    LParen,
    RParen,
    Comma,
    Pipe,
    Eq,
    NotEq,
    /// Operators outside the subset, kept so the error can name them.
    Other(String),
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&(off, c)) = chars.get(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '.' => {
                toks.push((Tok::Dot, off));
                i += 1;
            }
            '(' => {
                toks.push((Tok::LParen, off));
                i += 1;
            }
            ')' => {
                toks.push((Tok::RParen, off));
                i += 1;
            }
            ',' => {
                toks.push((Tok::Comma, off));
                i += 1;
            }
            '|' => {
                toks.push((Tok::Pipe, off));
                i += 1;
            }
            '=' => {
                toks.push((Tok::Eq, off));
                i += 1;
            }
            '!' if chars.get(i + 1).map(|p| p.1) == Some('=') => {
                toks.push((Tok::NotEq, off));
                i += 2;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else { return Err(ParseError::UnexpectedEnd) };
                    i += 1;
                    match ch {
                        '\'' => break,
                        '\\' => {
                            let Some(&(_, esc)) = chars.get(i) else { return Err(ParseError::UnexpectedEnd) };
                            i += 1;
                            s.push(match esc {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                'f' => '\u{c}',
                                other => other,
                            });
                        }
                        other => s.push(other),
                    }
                }
                toks.push((Tok::Str(s), off));
            }
            '`' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else { return Err(ParseError::UnexpectedEnd) };
                    i += 1;
                    if ch == '`' {
                        break;
                    }
                    s.push(ch);
                }
                toks.push((Tok::Ident(s), off));
            }
            '$' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|p| p.1.is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|p| p.1).collect();
                if word == "$this" {
                    toks.push((Tok::This, off));
                } else {
                    return Err(ParseError::Unsupported(word));
                }
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while chars.get(i).is_some_and(|p| p.1.is_ascii_digit()) {
                    i += 1;
                }
                if chars.get(i).map(|p| p.1) == Some('.') && chars.get(i + 1).is_some_and(|p| p.1.is_ascii_digit()) {
                    i += 1;
                    while chars.get(i).is_some_and(|p| p.1.is_ascii_digit()) {
                        i += 1;
                    }
                }
                let text: String = chars[start..i].iter().map(|p| p.1).collect();
                let n = text.parse::<f64>().map_err(|_| ParseError::Unexpected { found: text.clone(), offset: off })?;
                toks.push((Tok::Num(n), off));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars.get(i).is_some_and(|p| p.1.is_alphanumeric() || p.1 == '_') {
                    i += 1;
                }
                toks.push((Tok::Ident(chars[start..i].iter().map(|p| p.1).collect()), off));
            }
            other => {
                let mut op = other.to_string();
                if let Some(&(_, next)) = chars.get(i + 1)
                    && matches!(next, '=' | '~')
                {
                    op.push(next);
                    i += 1;
                }
                i += 1;
                toks.push((Tok::Other(op), off));
            }
        }
    }
    Ok(toks)
}

/// Parses an expression of the supported subset.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.expr()?;
    match p.toks.get(p.pos) {
        None => Ok(e),
        Some((tok, offset)) => Err(unexpected(tok, *offset)),
    }
}

fn unexpected(tok: &Tok, offset: usize) -> ParseError {
    match tok {
        Tok::Other(op) => ParseError::Unsupported(format!("operator `{op}`")),
        other => ParseError::Unexpected { found: format!("{other:?}"), offset },
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == kw)
    }

    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        let t = self.toks.get(self.pos).cloned().ok_or(ParseError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(t)
    }

    fn expect(&mut self, want: &Tok) -> Result<(), ParseError> {
        let (tok, off) = self.next()?;
        if &tok == want { Ok(()) } else { Err(unexpected(&tok, off)) }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        let e = self.or_expr();
        self.depth -= 1;
        e
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and_expr()?;
        loop {
            if self.peek_keyword("or") {
                self.pos += 1;
                left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
            } else if self.peek_keyword("xor") || self.peek_keyword("implies") {
                return Err(ParseError::Unsupported(format!("operator `{}`", self.next()?.0.ident_text())));
            } else {
                return Ok(left);
            }
        }
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.eq_expr()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.eq_expr()?));
        }
        Ok(left)
    }

    fn eq_expr(&mut self) -> Result<Expr, ParseError> {
        let left = self.union_expr()?;
        match self.peek() {
            Some(Tok::Eq) => {
                self.pos += 1;
                Ok(Expr::Equal(Box::new(left), Box::new(self.union_expr()?)))
            }
            Some(Tok::NotEq) => {
                self.pos += 1;
                Ok(Expr::NotEqual(Box::new(left), Box::new(self.union_expr()?)))
            }
            Some(Tok::Ident(w)) if w == "in" || w == "contains" => {
                Err(ParseError::Unsupported(format!("operator `{w}`")))
            }
            _ => Ok(left),
        }
    }

    fn union_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.type_expr()?;
        while self.peek() == Some(&Tok::Pipe) {
            self.pos += 1;
            left = Expr::Union(Box::new(left), Box::new(self.type_expr()?));
        }
        Ok(left)
    }

    fn type_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.postfix()?;
        loop {
            if self.peek_keyword("as") {
                self.pos += 1;
                left = Expr::As(Box::new(left), self.type_specifier()?);
            } else if self.peek_keyword("is") {
                self.pos += 1;
                left = Expr::Is(Box::new(left), self.type_specifier()?);
            } else {
                return Ok(left);
            }
        }
    }

    /// `Quantity` or `FHIR.Quantity`; the namespace is dropped because FHIR and System names are matched leniently.
    fn type_specifier(&mut self) -> Result<String, ParseError> {
        let (tok, off) = self.next()?;
        let Tok::Ident(mut name) = tok else { return Err(unexpected(&tok, off)) };
        if self.peek() == Some(&Tok::Dot) && matches!(self.toks.get(self.pos + 1), Some((Tok::Ident(_), _))) {
            self.pos += 1;
            if let (Tok::Ident(inner), _) = self.next()? {
                name = inner;
            }
        }
        Ok(name)
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.term()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    let (tok, off) = self.next()?;
                    let Tok::Ident(name) = tok else { return Err(unexpected(&tok, off)) };
                    if self.peek() == Some(&Tok::LParen) {
                        let func = self.function(&name)?;
                        e = Expr::Call(Some(Box::new(e)), func);
                    } else {
                        e = Expr::Member(Box::new(e), name);
                    }
                }
                Some(Tok::Other(op)) if op == "[" => return Err(ParseError::Unsupported("indexer `[]`".into())),
                _ => return Ok(e),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let (tok, off) = self.next()?;
        match tok {
            Tok::LParen => {
                let inner = self.expr()?;
                self.expect(&Tok::RParen)?;
                Ok(Expr::Paren(Box::new(inner)))
            }
            Tok::Str(s) => Ok(Expr::Literal(Literal::String(s))),
            Tok::Num(n) => Ok(Expr::Literal(Literal::Number(n))),
            Tok::This => Ok(Expr::This),
            Tok::Ident(w) if w == "true" => Ok(Expr::Literal(Literal::Boolean(true))),
            Tok::Ident(w) if w == "false" => Ok(Expr::Literal(Literal::Boolean(false))),
            Tok::Ident(name) => {
                if self.peek() == Some(&Tok::LParen) {
                    Ok(Expr::Call(None, self.function(&name)?))
                } else {
                    Ok(Expr::Identifier(name))
                }
            }
            other => Err(unexpected(&other, off)),
        }
    }

    /// Parses `name(args)`; the opening parenthesis is the next token.
    fn function(&mut self, name: &str) -> Result<Function, ParseError> {
        self.expect(&Tok::LParen)?;
        let no_args = |p: &mut Parser, f: Function| -> Result<Function, ParseError> {
            p.expect(&Tok::RParen)?;
            Ok(f)
        };
        match name {
            "where" => {
                let c = self.expr()?;
                self.expect(&Tok::RParen)?;
                Ok(Function::Where(Box::new(c)))
            }
            "exists" => {
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                    Ok(Function::Exists(None))
                } else {
                    let c = self.expr()?;
                    self.expect(&Tok::RParen)?;
                    Ok(Function::Exists(Some(Box::new(c))))
                }
            }
            "empty" => no_args(self, Function::Empty),
            "not" => no_args(self, Function::Not),
            "first" => no_args(self, Function::First),
            "last" => no_args(self, Function::Last),
            "resolve" => no_args(self, Function::Resolve),
            "ofType" | "as" | "is" => {
                let t = self.type_specifier()?;
                self.expect(&Tok::RParen)?;
                Ok(match name {
                    "ofType" => Function::OfType(t),
                    "as" => Function::As(t),
                    _ => Function::Is(t),
                })
            }
            "extension" => {
                let (tok, off) = self.next()?;
                let Tok::Str(url) = tok else { return Err(unexpected(&tok, off)) };
                self.expect(&Tok::RParen)?;
                Ok(Function::Extension(url))
            }
            other => Err(ParseError::Unsupported(format!("function `{other}()`"))),
        }
    }
}

impl Tok {
    fn ident_text(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------------------------

/// One item of a FHIRPath collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A node of the resource. `type_name` is known for resources (`resourceType`) and choice elements
    /// (`valueQuantity` gives `Quantity`); elsewhere the extractor infers the data type from the JSON shape.
    Node {
        value: &'a Value,
        type_name: Option<String>,
    },
    Boolean(bool),
    String(String),
    Number(f64),
    /// What `resolve()` yields without a database: only the target's resource type is known.
    Resolved {
        type_name: String,
    },
}

impl<'a> Item<'a> {
    pub fn json(&self) -> Option<&'a Value> {
        match self {
            Item::Node { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn type_name(&self) -> Option<&str> {
        match self {
            Item::Node { type_name, .. } => type_name.as_deref(),
            Item::Boolean(_) => Some("boolean"),
            Item::String(_) => Some("string"),
            Item::Number(_) => Some("decimal"),
            Item::Resolved { type_name } => Some(type_name),
        }
    }
}

/// Evaluates `expr` against a resource (the resource is the initial focus and the root for `#contained` lookups).
pub fn evaluate<'a>(expr: &Expr, resource: &'a Value) -> Vec<Item<'a>> {
    let root = node(resource, None);
    Evaluator { resource }.eval(expr, std::slice::from_ref(&root))
}

/// Evaluates a relative expression (a composite component) against items an earlier evaluation produced.
pub fn evaluate_on<'a>(expr: &Expr, resource: &'a Value, focus: &[Item<'a>]) -> Vec<Item<'a>> {
    Evaluator { resource }.eval(expr, focus)
}

fn node(value: &Value, type_name: Option<String>) -> Item<'_> {
    let type_name = type_name.or_else(|| value.get("resourceType").and_then(Value::as_str).map(str::to_owned));
    Item::Node { value, type_name }
}

/// Data type names that can follow a choice element's stem (`value` + `Quantity`), so `class` never finds
/// `classHistory`.
const CHOICE_SUFFIXES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

/// FHIR spells primitive type names in lower camel case (`DateTime` suffix, `dateTime` type).
fn type_from_suffix(suffix: &str) -> String {
    const PRIMITIVES: &[&str] = &[
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
    ];
    if PRIMITIVES.contains(&suffix) {
        let mut chars = suffix.chars();
        match chars.next() {
            Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
            None => String::new(),
        }
    } else {
        suffix.to_owned()
    }
}

/// Whether a value whose type is `actual` is of type `wanted`, honouring the FHIR specialisations search cares about.
/// Names compare case-insensitively because definitions mix FHIR and System spellings (`ofType(DateTime)`).
pub fn type_matches(actual: &str, wanted: &str) -> bool {
    if actual.eq_ignore_ascii_case(wanted) {
        return true;
    }
    let w = wanted.to_ascii_lowercase();
    match w.as_str() {
        "quantity" => ["Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"].contains(&actual),
        "string" => ["code", "id", "markdown"].contains(&actual),
        "uri" => ["url", "canonical", "oid", "uuid"].contains(&actual),
        "integer" => ["unsignedInt", "positiveInt"].contains(&actual),
        "decimal" => actual == "integer",
        _ => false,
    }
}

struct Evaluator<'a> {
    resource: &'a Value,
}

#[derive(Debug, PartialEq)]
enum Prim<'v> {
    Str(&'v str),
    Bool(bool),
    Num(f64),
    Json(&'v Value),
}

fn prim<'v>(item: &'v Item<'_>) -> Option<Prim<'v>> {
    match item {
        Item::Node { value, .. } => Some(match value {
            Value::String(s) => Prim::Str(s),
            Value::Bool(b) => Prim::Bool(*b),
            Value::Number(n) => Prim::Num(n.as_f64()?),
            other => Prim::Json(other),
        }),
        Item::Boolean(b) => Some(Prim::Bool(*b)),
        Item::String(s) => Some(Prim::Str(s)),
        Item::Number(n) => Some(Prim::Num(*n)),
        Item::Resolved { .. } => None,
    }
}

fn items_equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (prim(a), prim(b)) {
        (Some(Prim::Num(x)), Some(Prim::Num(y))) => x == y,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// FHIRPath singleton evaluation of a collection used as a boolean: empty is "unknown", a lone boolean is itself
/// and any other non-empty collection counts as true.
fn to_bool(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [] => None,
        [Item::Boolean(b)] => Some(*b),
        [Item::Node { value: Value::Bool(b), .. }] => Some(*b),
        _ => Some(true),
    }
}

fn from_bool<'a>(b: Option<bool>) -> Vec<Item<'a>> {
    b.map(Item::Boolean).into_iter().collect()
}

impl<'a> Evaluator<'a> {
    fn eval(&self, expr: &Expr, focus: &[Item<'a>]) -> Vec<Item<'a>> {
        match expr {
            Expr::Identifier(name) if starts_upper(name) => focus
                .iter()
                .filter(|item| {
                    name == "Resource"
                        || name == "DomainResource"
                        || item.json().and_then(|v| v.get("resourceType")).and_then(Value::as_str) == Some(name)
                })
                .cloned()
                .collect(),
            Expr::Identifier(name) => focus.iter().flat_map(|item| member(item, name)).collect(),
            Expr::This => focus.to_vec(),
            Expr::Literal(Literal::String(s)) => vec![Item::String(s.clone())],
            Expr::Literal(Literal::Number(n)) => vec![Item::Number(*n)],
            Expr::Literal(Literal::Boolean(b)) => vec![Item::Boolean(*b)],
            Expr::Member(base, name) => self.eval(base, focus).iter().flat_map(|item| member(item, name)).collect(),
            Expr::Call(base, func) => {
                let input = match base {
                    Some(base) => self.eval(base, focus),
                    None => focus.to_vec(),
                };
                self.call(func, input)
            }
            Expr::Paren(inner) => self.eval(inner, focus),
            Expr::Union(a, b) => {
                let mut out = self.eval(a, focus);
                for item in self.eval(b, focus) {
                    if !out.iter().any(|o| same_item(o, &item)) {
                        out.push(item);
                    }
                }
                out
            }
            Expr::Equal(a, b) => from_bool(self.equal(a, b, focus)),
            Expr::NotEqual(a, b) => from_bool(self.equal(a, b, focus).map(|eq| !eq)),
            Expr::And(a, b) => {
                let (x, y) = (to_bool(&self.eval(a, focus)), to_bool(&self.eval(b, focus)));
                from_bool(match (x, y) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                })
            }
            Expr::Or(a, b) => {
                let (x, y) = (to_bool(&self.eval(a, focus)), to_bool(&self.eval(b, focus)));
                from_bool(match (x, y) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                })
            }
            Expr::As(a, t) => self.eval(a, focus).into_iter().filter(|i| is_type(i, t)).collect(),
            Expr::Is(a, t) => {
                let items = self.eval(a, focus);
                match items.as_slice() {
                    [one] => vec![Item::Boolean(is_type(one, t))],
                    _ => Vec::new(),
                }
            }
        }
    }

    /// FHIRPath compares collections item by item. Search definitions also write `coding.code = 'x'` against
    /// several codings, so a singleton compared with a larger collection is deliberately read as "any item equals".
    fn equal(&self, a: &Expr, b: &Expr, focus: &[Item<'a>]) -> Option<bool> {
        let (la, lb) = (self.eval(a, focus), self.eval(b, focus));
        if la.is_empty() || lb.is_empty() {
            return None;
        }
        if la.len() == lb.len() {
            return Some(la.iter().zip(&lb).all(|(x, y)| items_equal(x, y)));
        }
        if la.len() == 1 || lb.len() == 1 {
            return Some(la.iter().any(|x| lb.iter().any(|y| items_equal(x, y))));
        }
        Some(false)
    }

    fn call(&self, func: &Function, input: Vec<Item<'a>>) -> Vec<Item<'a>> {
        match func {
            Function::Where(criteria) => input
                .into_iter()
                .filter(|item| to_bool(&self.eval(criteria, std::slice::from_ref(item))) == Some(true))
                .collect(),
            Function::Exists(None) => vec![Item::Boolean(!input.is_empty())],
            Function::Exists(Some(criteria)) => vec![Item::Boolean(
                input.iter().any(|item| to_bool(&self.eval(criteria, std::slice::from_ref(item))) == Some(true)),
            )],
            Function::Empty => vec![Item::Boolean(input.is_empty())],
            Function::Not => from_bool(to_bool(&input).map(|b| !b)),
            Function::First => input.into_iter().take(1).collect(),
            Function::Last => input.into_iter().last().into_iter().collect(),
            Function::OfType(t) | Function::As(t) => input.into_iter().filter(|i| is_type(i, t)).collect(),
            Function::Is(t) => match input.as_slice() {
                [one] => vec![Item::Boolean(is_type(one, t))],
                _ => Vec::new(),
            },
            Function::Resolve => input.iter().filter_map(|item| self.resolve(item)).collect(),
            Function::Extension(url) => input
                .iter()
                .flat_map(|item| member(item, "extension"))
                .filter(|ext| ext.json().and_then(|v| v.get("url")).and_then(Value::as_str) == Some(url.as_str()))
                .collect(),
        }
    }

    fn resolve(&self, item: &Item<'a>) -> Option<Item<'a>> {
        let value = item.json()?;
        let reference = match value {
            Value::Object(obj) => obj.get("reference").and_then(Value::as_str),
            Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        if let Some(local) = reference.and_then(|r| r.strip_prefix('#')) {
            let contained = self.resource.get("contained")?.as_array()?;
            let target = contained.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(local))?;
            let type_name = target.get("resourceType")?.as_str()?.to_owned();
            return Some(Item::Resolved { type_name });
        }
        let from_reference = reference.and_then(|r| reference_type(r));
        let from_type_field = value.get("type").and_then(Value::as_str);
        let type_name = from_reference.or(from_type_field)?;
        Some(Item::Resolved { type_name: type_name.to_owned() })
    }
}

/// The resource type named by a literal reference (`Patient/1`, `http://x/fhir/Patient/1/_history/2`).
pub fn reference_type(reference: &str) -> Option<&str> {
    let (ty, _) = reference_type_and_id(reference)?;
    Some(ty)
}

/// `(type, id)` of a relative or absolute RESTful reference; `None` for `#contained`, `urn:` and other forms.
pub fn reference_type_and_id(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let segments = match segments.iter().position(|s| *s == "_history") {
        Some(pos) => &segments[..pos],
        None => &segments[..],
    };
    match segments {
        [.., ty, id] if starts_upper(ty) && ty.chars().all(|c| c.is_ascii_alphanumeric()) && !id.is_empty() => {
            Some((ty, id))
        }
        _ => None,
    }
}

fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => std::ptr::eq(*x, *y),
        _ => a == b,
    }
}

fn is_type(item: &Item<'_>, wanted: &str) -> bool {
    if let Some(actual) = item.type_name() {
        if type_matches(actual, wanted) {
            return true;
        }
        // Anything carrying a resourceType (or resolved to one) is a Resource.
        let is_resource =
            matches!(item, Item::Resolved { .. }) || item.json().is_some_and(|v| v.get("resourceType").is_some());
        return is_resource && (wanted == "Resource" || wanted == "DomainResource");
    }
    // Without a recorded type only the JSON kind is known; a string could be any string-based primitive.
    match item.json() {
        Some(Value::Bool(_)) => wanted.eq_ignore_ascii_case("boolean"),
        Some(Value::Number(n)) => {
            wanted.eq_ignore_ascii_case("decimal") || (n.is_i64() && wanted.eq_ignore_ascii_case("integer"))
        }
        Some(Value::String(_)) => wanted.eq_ignore_ascii_case("string"),
        _ => false,
    }
}

fn member<'a>(item: &Item<'a>, name: &str) -> Vec<Item<'a>> {
    let Some(Value::Object(obj)) = item.json() else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |value: &'a Value, type_name: Option<String>| match value {
        Value::Array(items) => out.extend(items.iter().map(|v| node(v, type_name.clone()))),
        Value::Null => {}
        other => out.push(node(other, type_name)),
    };
    if let Some(value) = obj.get(name) {
        push(value, None);
        return out;
    }
    for (key, value) in obj {
        if let Some(suffix) = key.strip_prefix(name)
            && CHOICE_SUFFIXES.contains(&suffix)
        {
            push(value, Some(type_from_suffix(suffix)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval_strs(expr: &str, resource: &Value) -> Vec<String> {
        let e = parse(expr).expect("parses");
        evaluate(&e, resource)
            .into_iter()
            .map(|i| match i {
                Item::Node { value, .. } => value.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn navigation_flattens_arrays() {
        let p = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"given": ["C"]}]});
        assert_eq!(eval_strs("Patient.name.given", &p), vec!["\"A\"", "\"B\"", "\"C\""]);
        assert!(eval_strs("Practitioner.name.given", &p).is_empty());
        assert_eq!(eval_strs("Resource.name.given.first()", &p), vec!["\"A\""]);
    }

    #[test]
    fn choice_types() {
        let o = json!({"resourceType": "Observation", "valueQuantity": {"value": 5}, "classHistory": 1});
        assert_eq!(eval_strs("Observation.value.ofType(Quantity)", &o), vec!["{\"value\":5}"]);
        assert_eq!(eval_strs("(Observation.value as Quantity)", &o), vec!["{\"value\":5}"]);
        assert!(eval_strs("Observation.value as CodeableConcept", &o).is_empty());
        assert!(eval_strs("Observation.class", &o).is_empty());
        let d = json!({"resourceType": "Observation", "valueDateTime": "2020"});
        assert_eq!(eval_strs("Observation.value.ofType(DateTime)", &d), vec!["\"2020\""]);
        assert_eq!(eval_strs("Observation.value is dateTime", &d), vec!["Boolean(true)"]);
    }

    #[test]
    fn where_and_resolve() {
        let t = json!({
            "resourceType": "Patient",
            "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
            "contained": [{"resourceType": "Patient", "id": "c1"}],
            "link": [{"other": {"reference": "Patient/9"}}, {"other": {"reference": "RelatedPerson/2"}},
                     {"other": {"reference": "#c1"}}, {"other": {"type": "Patient", "identifier": {"value": "x"}}}]
        });
        assert_eq!(eval_strs("Patient.telecom.where(system='email').value", &t), vec!["\"a@b\""]);
        assert_eq!(eval_strs("Patient.link.other.where(resolve() is Patient)", &t).len(), 3);
    }

    #[test]
    fn extension_forms() {
        let r = json!({"resourceType": "Patient", "extension": [
            {"url": "http://a", "valueString": "x"}, {"url": "http://b", "valueString": "y"}]});
        assert_eq!(eval_strs("Patient.extension('http://b').value", &r), vec!["\"y\""]);
        assert_eq!(eval_strs("Patient.extension.where(url = 'http://a').value.ofType(string)", &r), vec!["\"x\""]);
    }

    #[test]
    fn boolean_logic() {
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        let unknown = json!({"resourceType": "Patient"});
        let e = "Patient.deceased.exists() and Patient.deceased != false";
        assert_eq!(eval_strs(e, &alive), vec!["Boolean(false)"]);
        assert_eq!(eval_strs(e, &dead), vec!["Boolean(true)"]);
        assert_eq!(eval_strs(e, &unknown), vec!["Boolean(false)"]);
        let c = json!({"resourceType": "X", "type": {"coding": [{"code": "a"}, {"code": "b"}]}});
        assert_eq!(eval_strs("X.type.coding.code = 'b'", &c), vec!["Boolean(true)"]);
    }

    #[test]
    fn rejects_unsupported_and_garbage_without_panicking() {
        for bad in ["Patient.name.select(given)", "a + b", "a[0]", "'unterminated", "(((", "a implies b", ")", "$index"]
        {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse(&"(".repeat(500)), Err(ParseError::TooDeep));
    }

    #[test]
    fn display_round_trips() {
        for src in [
            "(Observation.value as Quantity) | Observation.component.value.ofType(SampledData)",
            "Patient.telecom.where(system = 'email')",
            "Task.for.where(resolve() is Patient)",
        ] {
            let e = parse(src).unwrap();
            assert_eq!(parse(&e.to_string()).unwrap(), e);
        }
    }

    #[test]
    fn references_parse() {
        assert_eq!(reference_type_and_id("Patient/1"), Some(("Patient", "1")));
        assert_eq!(reference_type_and_id("http://x/fhir/Patient/1/_history/3"), Some(("Patient", "1")));
        assert_eq!(reference_type_and_id("#c"), None);
        assert_eq!(reference_type_and_id("urn:uuid:1234"), None);
    }
}
