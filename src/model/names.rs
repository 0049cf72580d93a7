//! Syntax rules for the identifiers a job names: PyPI projects (PEP 508 / PEP 503),
//! platforms, variants and recipes. Pure functions, so the CLI, the master and the
//! worker all reject the same things with the same words.

/// True when `name` is a valid PyPI project name (PEP 508: ASCII letters, digits,
/// `.`, `_`, `-`, starting and ending with a letter or digit).
pub fn is_valid_project_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    match bytes {
        [] => false,
        [only] => alnum(only),
        [first, middle @ .., last] => {
            alnum(first)
                && alnum(last)
                && middle
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        }
    }
}

/// The PEP 503 normal form of a project name: lower case, every run of `-`, `_`, `.`
/// replaced by one `-`. Two names with the same normal form are the same project.
pub fn normalize_project_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('-');
            }
            in_separator = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_separator = false;
        }
    }
    out
}

/// True when `platform` follows the platform syntax: lower-case words of letters and
/// digits joined by `-`, the first starting with a letter (`linux-debian`,
/// `linux-debian-12`, `windows-10`). Dots are allowed after the first word (`macos-14.5`).
pub fn is_valid_platform(platform: &str) -> bool {
    let mut words = platform.split('-');
    let Some(first) = words.next() else {
        return false;
    };
    let first_ok = first.starts_with(|c: char| c.is_ascii_lowercase())
        && first
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && words.all(|w| {
            !w.is_empty()
                && w.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.')
        })
}

/// True when `variant` follows the variant syntax: a lower-case letter or digit, then
/// letters, digits, `.`, `_`, `-`, `=` (`python3.11`, `arch=x86_64`, `large-disk`).
pub fn is_valid_variant(variant: &str) -> bool {
    variant.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && variant.len() <= 64
        && variant.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '=')
        })
}

/// True when `recipe` follows the recipe identifier syntax: a lower-case letter, then
/// lower-case letters, digits, `_` and `-` (`recipe`, `install`, `behaviour`).
pub fn is_valid_recipe_identifier(recipe: &str) -> bool {
    recipe.starts_with(|c: char| c.is_ascii_lowercase())
        && recipe.len() <= 64
        && recipe
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_pep_508() {
        for good in [
            "rarfile",
            "A",
            "zope.interface",
            "typing_extensions",
            "py-3",
            "a1",
        ] {
            assert!(is_valid_project_name(good), "{good} should be valid");
        }
        for bad in [
            "", "-a", "a-", ".a", "a.", "rar file", "rarfile!", "é", "_x",
        ] {
            assert!(!is_valid_project_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn normal_form_collapses_separators_and_case() {
        assert_eq!(normalize_project_name("Zope.Interface"), "zope-interface");
        assert_eq!(
            normalize_project_name("typing__extensions"),
            "typing-extensions"
        );
        assert_eq!(normalize_project_name("a-_.b"), "a-b");
        assert_eq!(normalize_project_name("rarfile"), "rarfile");
    }

    #[test]
    fn platform_syntax() {
        for good in [
            "linux-debian",
            "linux-debian-12",
            "windows-10",
            "macos-14.5",
            "linux",
        ] {
            assert!(is_valid_platform(good), "{good} should be valid");
        }
        for bad in [
            "",
            "Linux-debian",
            "linux_debian",
            "linux--debian",
            "linux-",
            "1linux",
            "linux debian",
            "linux-.x",
        ] {
            assert!(!is_valid_platform(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn variant_and_recipe_syntax() {
        assert!(is_valid_variant("python3.11"));
        assert!(is_valid_variant("arch=x86_64"));
        assert!(!is_valid_variant(""));
        assert!(!is_valid_variant("Python"));
        assert!(!is_valid_variant("a b"));
        assert!(is_valid_recipe_identifier("recipe"));
        assert!(is_valid_recipe_identifier("install-only"));
        assert!(!is_valid_recipe_identifier("Recipe"));
        assert!(!is_valid_recipe_identifier("9lives"));
        assert!(!is_valid_recipe_identifier(""));
    }
}
