//! Which driver a device's `modalias` resolves to, from `modules.alias`.

/// Matches `text` against a `modules.alias` glob (`*`, `?`, `[...]`, as fnmatch without flags).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&p[pi..], t[ti]) {
                        if matched {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `p`; returns whether it matched and
/// the class length, or `None` for an unterminated class (then `[` is literal).
fn class_match(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// The modules whose aliases match `modalias`, most specific pattern first (most literal
/// characters: a vendor:device match beats a class match), without duplicates.
pub fn resolve(modules_alias: &str, modalias: &str) -> Vec<String> {
    let mut hits: Vec<(usize, String)> = Vec::new();
    for line in modules_alias.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("alias") {
            continue;
        }
        let (Some(pattern), Some(module)) = (f.next(), f.next()) else {
            continue;
        };
        if glob_match(pattern, modalias) {
            let literal = pattern
                .bytes()
                .filter(|b| !matches!(b, b'*' | b'?' | b'[' | b']'))
                .count();
            hits.push((usize::MAX - literal, module.to_string()));
        }
    }
    hits.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, m) in hits {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(!glob_match(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D4sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("x[ab]", "xb"));
        assert!(glob_match("x[", "x["));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*b*b", "abxbb"));
    }

    #[test]
    fn most_specific_module_first() {
        let aliases = "\
# Aliases extracted from modules themselves.
alias pci:v*d*sv*sd*bc02sc00i* generic_nic
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias vfio_pci:v00008086d000010D3sv*sd*bc*sc*i* vfio_pci
alias pci:v00008086d*sv*sd*bc*sc*i* intel_thing
alias broken
";
        let m = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00";
        assert_eq!(
            resolve(aliases, m),
            vec!["e1000e", "intel_thing", "generic_nic"]
        );
        assert!(resolve(aliases, "pci:v00001234d00001111sv0sd0bc03sc00i00").is_empty());
    }
}
