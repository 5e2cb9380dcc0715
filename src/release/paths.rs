//! The path rules packing and inspection share: which entry names are allowed and which
//! symlink targets stay inside the release. Both sides use the same functions, so what
//! ferry packs is exactly what it accepts. Pure string checks: no file system access.

/// Refuses characters that would need escaping in `sha256sum` lines or could reach a
/// terminal raw.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.chars().any(char::is_control) {
        Err("names with control characters (such as newlines) are not allowed")
    } else if name.contains('\\') {
        Err("names with backslashes are not allowed")
    } else {
        Ok(())
    }
}

/// A relative archive path in the form packing writes: `a/b/c`, nothing empty, `.` or `..`.
pub(crate) fn check_entry_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("its path is empty");
    }
    if path.starts_with('/') {
        return Err("its path is absolute");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("its path has an empty component"),
            "." => return Err("its path has a `.` component"),
            ".." => return Err("its path has a `..` component"),
            _ => {}
        }
    }
    check_name(path)
}

/// Whether a symlink at `link` (a relative archive path) pointing to `target` stays
/// inside the release root. Resolution is lexical, from the link's directory. `..` is
/// allowed only before the first name: after a name it would step out of whatever that
/// name resolves to, which may be another symlink, so `a/..` is not always the link's
/// directory. With that rule, and every symlink checked, no chain of links leaves the root.
pub(crate) fn check_symlink_target(link: &str, target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("its target is empty");
    }
    if target.starts_with('/') {
        return Err("its target is absolute");
    }
    let mut depth = link.split('/').count() - 1;
    let mut descended = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if descended => return Err("its target uses `..` after a name"),
            ".." if depth == 0 => return Err("its target leaves the release"),
            ".." => depth -= 1,
            _ => descended = true,
        }
    }
    Ok(())
}

/// The form a target is archived in: no `.` or empty components and no trailing `/`,
/// which is also what the tar writer would make of it, so manifest and archive agree.
pub(crate) fn normalize_target(target: &str) -> String {
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_inside_the_root_are_allowed() {
        for (link, target) in
            [("a", "b"), ("a", "."), ("bin/run", "../lib/run"), ("a/b/c", "../../x/y"), ("a/b", ".."), ("a", "./b/c/")]
        {
            assert_eq!(check_symlink_target(link, target), Ok(()), "{link} -> {target}");
        }
    }

    #[test]
    fn symlink_targets_leaving_the_root_are_refused() {
        for (link, target) in [
            ("a", "/etc/passwd"),
            ("a", ".."),
            ("a", "../x"),
            ("bin/run", "../../x"),
            ("a", "b/../c"),
            ("a", "b/../../x"),
            ("a", ""),
        ] {
            assert!(check_symlink_target(link, target).is_err(), "{link} -> {target}");
        }
    }

    #[test]
    fn entry_paths_must_be_plain_relative_paths() {
        assert_eq!(check_entry_path("a/b.txt"), Ok(()));
        for path in ["", "/a", "../evil", "a/../b", "./a", "a//b", "a/", "a\nb", "a\\b"] {
            assert!(check_entry_path(path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn targets_are_normalized_the_way_tar_stores_them() {
        assert_eq!(normalize_target("./lib//x/"), "lib/x");
        assert_eq!(normalize_target("./"), ".");
        assert_eq!(normalize_target("../a"), "../a");
    }
}
