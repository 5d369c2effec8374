//! Tag patterns with Fluentd's `<match>` semantics, for tag policy.
//!
//! - `*` matches one tag part (any characters but `.`);
//! - `**` matches zero or more tag parts (any characters): `a.**` matches
//!   `a`, `**.a` matches `a`, `a.**.b` matches `a.b`;
//! - `{x,y}` matches either alternative (which may hold `*` and `**`);
//! - `${identity}` is replaced by the dialing identity's name before the
//!   pattern is compiled, so one policy can give every app its own tags.
//!   Only a name that is one tag part is put in: a name with a `.` (which
//!   identity names may hold) would span several parts, and so reach into
//!   the tags of another identity: under `app.${identity}.**`, `web` may
//!   write `app.web.prod.x`, which would be `web.prod`'s. For such a name
//!   every pattern holding `${identity}` matches nothing (patterns without
//!   it are unaffected); [`check_identity_for_tags`] says why, for a
//!   warning.
//!
//! A list is written comma-separated (`app.web.**,shared.*`); commas inside
//! braces belong to the braces.

/// Longest pattern (after `${identity}` is replaced).
pub const MAX_PATTERN: usize = 256;

/// Most patterns in one list.
pub const MAX_PATTERNS: usize = 32;

/// Most brace-free forms one pattern may expand to.
pub const MAX_EXPANSIONS: usize = 64;

/// Longest tag matched; a longer tag never matches.
pub const MAX_TAG: usize = 1024;

/// The placeholder for the dialing identity's name.
pub const IDENTITY_PLACEHOLDER: &str = "${identity}";

/// Why a pattern is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// Empty pattern or list.
    #[error("an empty tag pattern; write e.g. app.web.** or app.${{identity}}.*")]
    Empty,
    /// Too long, too many, or too many alternatives.
    #[error("tag pattern {0:?} is too large (at most {MAX_PATTERN} bytes, {MAX_PATTERNS} patterns, {MAX_EXPANSIONS} brace alternatives)")]
    TooLarge(String),
    /// `${identity}` glued to other characters in a tag part, or inside
    /// braces.
    #[error("tag pattern {0:?} uses ${{identity}} inside a tag part; write it as a whole part between dots (e.g. app.${{identity}}.**), so that one identity's name cannot extend into another's")]
    PlaceholderNotWholePart(String),
    /// Braces do not pair up.
    #[error("tag pattern {0:?} has unbalanced braces")]
    Braces(String),
    /// A character no tag or pattern holds.
    #[error("tag pattern {pattern:?} holds {ch:?}; use letters, digits, '.', '_', '-', '*', '**', {{a,b}} and ${{identity}}")]
    BadChar {
        /// The pattern.
        pattern: String,
        /// The character.
        ch: char,
    },
}

/// Why the `${identity}` patterns never match an identity's tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityTagError {
    /// The name holds a `.`.
    #[error("identity {name} has a '.' in its name, so ${{identity}} tag patterns never match its tags (its name would span several tag parts and reach into the tags of another identity); rename it, e.g. to {suggestion}")]
    Dotted {
        /// The name.
        name: String,
        /// The name with `-` for `.`.
        suggestion: String,
    },
    /// The name is empty or holds a character no tag part holds.
    #[error("identity {0:?} is not a tag part (letters, digits, '_' and '-'), so ${{identity}} tag patterns never match its tags; rename it")]
    NotATagPart(String),
}

/// Whether `${identity}` tag patterns can match the tags of identity
/// `name`: a pure check for warnings (the controller, `policy explain`).
/// [`TagRules::new`] applies the same rule: for a name this refuses, every
/// pattern holding `${identity}` matches nothing.
pub fn check_identity_for_tags(name: &str) -> Result<(), IdentityTagError> {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.is_empty() && name.chars().all(part) {
        return Ok(());
    }
    if !name.is_empty() && name.chars().all(|c| part(c) || c == '.') {
        return Err(IdentityTagError::Dotted {
            name: name.to_string(),
            suggestion: name.replace('.', "-"),
        });
    }
    Err(IdentityTagError::NotATagPart(name.to_string()))
}

/// Splits a comma-separated list of patterns (commas inside braces stay).
pub fn split_list(list: &str) -> Result<Vec<String>, PatternError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in list.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| PatternError::Braces(list.to_string()))?;
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if depth != 0 {
        return Err(PatternError::Braces(list.to_string()));
    }
    out.push(cur);
    let out: Vec<String> = out
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if out.is_empty() {
        return Err(PatternError::Empty);
    }
    if out.len() > MAX_PATTERNS {
        return Err(PatternError::TooLarge(list.to_string()));
    }
    for p in &out {
        check(p)?;
    }
    Ok(out)
}

/// Whether every `${identity}` in `pattern` is a whole tag part: between
/// dots or at an end, outside braces. Glued to other characters
/// (`${identity}-logs`, `app.${identity}*`) or inside an alternative, the
/// name of one identity could extend into another's (`web` into
/// `web-prod`).
fn placeholder_is_whole_part(pattern: &str) -> bool {
    let mut rest = pattern;
    let mut offset = 0;
    while let Some(at) = rest.find(IDENTITY_PLACEHOLDER) {
        let start = offset + at;
        let end = start + IDENTITY_PLACEHOLDER.len();
        let before = pattern[..start].chars().next_back();
        let after = pattern[end..].chars().next();
        if !matches!(before, None | Some('.')) || !matches!(after, None | Some('.')) {
            return false;
        }
        let head = &pattern[..start];
        if head.matches('{').count() > head.matches('}').count() {
            return false;
        }
        offset = end;
        rest = &pattern[end..];
    }
    true
}

/// Checks one pattern as written (with its placeholder).
pub fn check(pattern: &str) -> Result<(), PatternError> {
    if !placeholder_is_whole_part(pattern) {
        return Err(PatternError::PlaceholderNotWholePart(pattern.to_string()));
    }
    let without = pattern.replace(IDENTITY_PLACEHOLDER, "x");
    if without.is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.len() > MAX_PATTERN {
        return Err(PatternError::TooLarge(pattern.to_string()));
    }
    if let Some(ch) = without
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-*{},".contains(*c)))
    {
        return Err(PatternError::BadChar {
            pattern: pattern.to_string(),
            ch,
        });
    }
    Pattern::compile(&without).map(|_| ())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Lit(u8),
    /// `*`: characters other than `.`.
    Star,
    /// `**`: any characters.
    Stars,
}

/// A compiled pattern: the brace-free forms it expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    forms: Vec<Vec<Token>>,
}

impl Pattern {
    /// Compiles `pattern` (placeholders already replaced).
    pub fn compile(pattern: &str) -> Result<Pattern, PatternError> {
        if pattern.len() > MAX_PATTERN {
            return Err(PatternError::TooLarge(pattern.to_string()));
        }
        let mut forms = Vec::new();
        for text in expand(pattern)? {
            for form in zero_parts(&text) {
                forms.push(tokens(&form));
                if forms.len() > MAX_EXPANSIONS * 4 {
                    return Err(PatternError::TooLarge(pattern.to_string()));
                }
            }
        }
        Ok(Pattern { forms })
    }

    /// Whether `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        tag.len() <= MAX_TAG && self.forms.iter().any(|f| glob(f, tag.as_bytes()))
    }
}

/// A policy's tag patterns for one identity: a tag is allowed if any
/// matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRules {
    patterns: Vec<Pattern>,
    /// Patterns holding `${identity}` left out, the identity's name not
    /// being one tag part ([`check_identity_for_tags`]).
    unsubstituted: usize,
}

impl TagRules {
    /// Compiles `patterns` (as written in policies) for `identity`. If
    /// `identity` is not one tag part ([`check_identity_for_tags`]), the
    /// patterns holding `${identity}` match nothing (they are still
    /// checked, so a broken pattern is an error for every identity).
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
        identity: &str,
    ) -> Result<TagRules, PatternError> {
        let substitute = check_identity_for_tags(identity).is_ok();
        let mut compiled = Vec::new();
        let mut unsubstituted = 0;
        for p in patterns {
            if !p.contains(IDENTITY_PLACEHOLDER) {
                compiled.push(Pattern::compile(p)?);
            } else if substitute && placeholder_is_whole_part(p) {
                compiled.push(Pattern::compile(
                    &p.replace(IDENTITY_PLACEHOLDER, identity),
                )?);
            } else {
                Pattern::compile(&p.replace(IDENTITY_PLACEHOLDER, "x"))?;
                unsubstituted += 1;
            }
        }
        Ok(TagRules {
            patterns: compiled,
            unsubstituted,
        })
    }

    /// How many patterns holding `${identity}` match nothing because the
    /// identity's name is not one tag part; [`check_identity_for_tags`]
    /// says why.
    pub fn unsubstituted(&self) -> usize {
        self.unsubstituted
    }

    /// Whether `tag` is allowed.
    pub fn allows(&self, tag: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(tag))
    }
}

/// `**` as a whole tag part may stand for no part at all: the forms of
/// `text` with each `.**` suffix, `**.` prefix and `.**.` infix either
/// kept or dropped (to `.` for an infix).
fn zero_parts(text: &str) -> Vec<String> {
    if let Some(stem) = text.strip_suffix(".**") {
        let mut v = zero_parts(stem);
        v.extend(zero_parts(stem).into_iter().map(|s| format!("{s}.**")));
        return v;
    }
    if let Some(tail) = text.strip_prefix("**.") {
        let mut v = zero_parts(tail);
        v.extend(zero_parts(tail).into_iter().map(|s| format!("**.{s}")));
        return v;
    }
    if let Some(i) = text.find(".**.") {
        let (head, tail) = (&text[..i], &text[i + 4..]);
        let mut v = Vec::new();
        for t in zero_parts(tail) {
            v.push(format!("{head}.{t}"));
            v.push(format!("{head}.**.{t}"));
        }
        return v;
    }
    vec![text.to_string()]
}

fn tokens(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' {
            if b.get(i + 1) == Some(&b'*') {
                out.push(Token::Stars);
                i += 2;
            } else {
                out.push(Token::Star);
                i += 1;
            }
        } else {
            out.push(Token::Lit(b[i]));
            i += 1;
        }
    }
    out
}

/// Expands `{a,b}` alternatives (nested too) into brace-free strings.
fn expand(pattern: &str) -> Result<Vec<String>, PatternError> {
    let too_large = || PatternError::TooLarge(pattern.to_string());
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(PatternError::Braces(pattern.to_string()));
        }
        return Ok(vec![pattern.to_string()]);
    };
    // The matching close brace, and the top-level commas inside.
    let mut depth = 0usize;
    let mut close = None;
    let mut cuts = vec![open];
    for (i, c) in pattern.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            ',' if depth == 1 => cuts.push(i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| PatternError::Braces(pattern.to_string()))?;
    cuts.push(close);
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    for w in cuts.windows(2) {
        let alt = &pattern[w[0] + 1..w[1]];
        for e in expand(&format!("{head}{alt}{tail}"))? {
            out.push(e);
            if out.len() > MAX_EXPANSIONS {
                return Err(too_large());
            }
        }
    }
    Ok(out)
}

/// Glob match by dynamic programming: O(pattern × tag), no backtracking.
fn glob(p: &[Token], t: &[u8]) -> bool {
    // row[j]: the pattern so far matches t[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for tok in p {
        let mut next = vec![false; t.len() + 1];
        match tok {
            Token::Lit(c) => {
                for j in 0..t.len() {
                    next[j + 1] = row[j] && t[j] == *c;
                }
            }
            Token::Star => {
                next[0] = row[0];
                for j in 1..=t.len() {
                    next[j] = row[j] || (next[j - 1] && t[j - 1] != b'.');
                }
            }
            Token::Stars => {
                next[0] = row[0];
                for j in 1..=t.len() {
                    next[j] = row[j] || next[j - 1];
                }
            }
        }
        row = next;
    }
    row[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, tag: &str) -> bool {
        Pattern::compile(pattern).expect("pattern").matches(tag)
    }

    #[test]
    fn fluentd_match_semantics() {
        let table: &[(&str, &str, bool)] = &[
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("a.**", "a", true),
            ("a.**", "a.b", true),
            ("a.**", "a.b.c", true),
            ("a.**", "ab", false),
            ("**", "anything.at.all", true),
            ("*", "one", true),
            ("*", "one.two", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.b.c", false),
            ("a.**.c", "a.b.b.c", true),
            ("{a,b}.x", "a.x", true),
            ("{a,b}.x", "b.x", true),
            ("{a,b}.x", "c.x", false),
            ("app.{web,api}.**", "app.api.v1", true),
            ("app.{web.*,db}", "app.web.1", true),
            ("app.{web.*,db}", "app.db", true),
            ("app.{web.*,db}", "app.web", false),
            ("x{1,{2,3}}", "x3", true),
            ("**.a", "a", true),
            ("**.a", "b.a", true),
            ("**.a", "ba", false),
            ("a.**.b", "a.b", true),
            ("a.**.b", "a.x.y.b", true),
            ("a.**.b", "ab", false),
            ("a*", "abc", true),
            ("a*", "a.b", false),
            ("a.{b,c}.**", "a.c", true),
            ("a.{b,c}.**", "a.cd", false),
            ("a.{b.**,c}", "a.b.c", true),
            ("a.{b.**,c}", "a.c.d", false),
        ];
        for (p, t, want) in table {
            assert_eq!(m(p, t), *want, "{p} vs {t}");
        }
    }

    #[test]
    fn identity_placeholder_and_lists() {
        let list = split_list("app.${identity}.**, shared.{a,b}").expect("list");
        assert_eq!(list, ["app.${identity}.**", "shared.{a,b}"]);
        let rules = TagRules::new(list.iter().map(String::as_str), "web-1").expect("rules");
        assert!(rules.allows("app.web-1"));
        assert!(rules.allows("app.web-1.access"));
        assert!(!rules.allows("app.web-2.access"), "another app's tags");
        assert!(rules.allows("shared.b"));
        assert!(!rules.allows("shared.c"));
    }

    #[test]
    fn the_identity_placeholder_must_be_a_whole_tag_part() {
        for ok in [
            "${identity}",
            "app.${identity}",
            "app.${identity}.**",
            "${identity}.x.*",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "app.${identity}-logs",
            "app.${identity}*",
            "app.x${identity}.**",
            "app.{${identity},shared}.*",
            "${identity}_x",
        ] {
            assert!(
                matches!(check(bad), Err(PatternError::PlaceholderNotWholePart(_))),
                "{bad}"
            );
        }
        // Under `app.${identity}*`, web would have reached web-prod's tags.
        assert!(split_list("app.${identity}*").is_err());
    }

    #[test]
    fn identity_names_are_checked_as_one_tag_part() {
        assert_eq!(check_identity_for_tags("web"), Ok(()));
        assert_eq!(check_identity_for_tags("web-prod_2"), Ok(()));
        let dotted = check_identity_for_tags("web.prod").expect_err("a dot");
        assert_eq!(
            dotted,
            IdentityTagError::Dotted {
                name: "web.prod".into(),
                suggestion: "web-prod".into()
            }
        );
        assert_eq!(
            dotted.to_string(),
            "identity web.prod has a '.' in its name, so ${identity} tag patterns never \
             match its tags (its name would span several tag parts and reach into the tags \
             of another identity); rename it, e.g. to web-prod"
        );
        for name in ["", "a*", "{a,b}", "a b", "x/y", "web.*"] {
            assert!(
                matches!(
                    check_identity_for_tags(name),
                    Err(IdentityTagError::NotATagPart(_))
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn dotted_identities_get_no_identity_namespace() {
        // (identity, tag, allowed) under `app.${identity}.**,shared.*`.
        let table: &[(&str, &str, bool)] = &[
            ("web", "app.web", true),
            ("web", "app.web.access", true),
            // No identity owns app.web.prod.*: web.prod matches nothing
            // under ${identity}, so this stays web's own tag.
            ("web", "app.web.prod.x", true),
            ("web", "app.webx", false),
            ("web", "app.web-prod.x", false),
            ("web.prod", "app.web.prod", false),
            ("web.prod", "app.web.prod.x", false),
            ("web.prod", "app.web", false),
            ("web.prod", "app.web.x", false),
            ("web.prod", "app.x", false),
            ("web.prod", "shared.a", true),
            ("web-prod", "app.web-prod.x", true),
            ("web-prod", "app.web.x", false),
            ("web-prod", "app.web.prod.x", false),
            ("web", "shared.a", true),
        ];
        let list = ["app.${identity}.**", "shared.*"];
        for (identity, tag, want) in table {
            let rules = TagRules::new(list, identity).expect("rules");
            assert_eq!(rules.allows(tag), *want, "{identity} writing {tag}");
        }
        assert_eq!(
            TagRules::new(list, "web").expect("rules").unsubstituted(),
            0
        );
        assert_eq!(
            TagRules::new(list, "web.prod")
                .expect("rules")
                .unsubstituted(),
            1
        );
        // Other placements of the placeholder, and patterns without it.
        let rules =
            TagRules::new(["${identity}", "{a,${identity}}.*", "b.**"], "web.prod").expect("rules");
        assert_eq!(rules.unsubstituted(), 2);
        assert!(!rules.allows("web.prod"));
        assert!(
            !rules.allows("a.x"),
            "a whole brace pattern holding it goes"
        );
        assert!(rules.allows("b.web.prod"));
        // A broken pattern is an error for every identity.
        assert!(TagRules::new(["app.${identity}.{x"], "web.prod").is_err());
        assert!(TagRules::new(["app.${identity}.{x"], "web").is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(split_list(""), Err(PatternError::Empty)));
        assert!(matches!(split_list("a.{b"), Err(PatternError::Braces(_))));
        assert!(matches!(split_list("a}"), Err(PatternError::Braces(_))));
        assert!(matches!(
            split_list("a b"),
            Err(PatternError::BadChar { .. })
        ));
        assert!(matches!(
            split_list("a/$x"),
            Err(PatternError::BadChar { .. })
        ));
        let many = "{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}";
        assert!(matches!(split_list(many), Err(PatternError::TooLarge(_))));
        assert!(!m("a.**", &"a.".repeat(600)), "over-long tags never match");
    }
}
