//! Keeping Herve's data directory out of reach of a program that runs as Herve's own
//! user, where the kernel has Landlock.
//!
//! File permissions cannot keep a process from files of its own user, so a program
//! that runs as Herve's user is given a Landlock domain in which everything is
//! reachable but Herve's data directory. Landlock only grants, so "everything but" is
//! written as grants of the siblings along the way: every entry of `/` but the first
//! directory of the data directory's path, every entry of that directory but the
//! next, and so on. The price: in the directories on that path, only the entries that
//! existed when the program started are reachable (keep the data directory in a
//! directory of its own, such as `/var/lib/herve`). A sandboxed process cannot read
//! Herve's `/proc` files either, nor signal it.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, ABI,
};

/// The newest Landlock ABI this code knows what to ask of; older kernels get what
/// they support (best effort).
const ABI_WANTED: ABI = ABI::V6;

/// A Landlock ruleset under which `hidden` (and only it) cannot be reached, or `None`
/// when the kernel has no Landlock.
pub fn hiding(hidden: &Path) -> Result<Option<RulesetCreated>, String> {
    if crate::sys::landlock_abi() == 0 {
        return Ok(None);
    }
    let hidden = std::fs::canonicalize(hidden).map_err(|e| e.to_string())?;
    let access = AccessFs::from_all(ABI_WANTED);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(access)
        .and_then(|ruleset| ruleset.scope(Scope::Signal))
        .and_then(Ruleset::create)
        .map_err(|e| e.to_string())?;
    for (directory, on_the_way) in path_steps(&hidden) {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name() == on_the_way {
                continue;
            }
            // What cannot be opened (gone meanwhile, no permission) is not granted.
            let Ok(fd) = PathFd::new(entry.path()) else {
                continue;
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Some(ruleset))
}

/// For `/a/b/c`: `(/, a)`, `(/a, b)`, `(/a/b, c)`.
fn path_steps(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut steps = Vec::new();
    let mut directory = PathBuf::from("/");
    for component in path.components() {
        if let Component::Normal(name) = component {
            steps.push((directory.clone(), name.to_os_string()));
            directory.push(name);
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_lead_down_to_the_path() {
        let steps = path_steps(Path::new("/a/b/c"));
        let steps: Vec<(String, String)> = steps
            .into_iter()
            .map(|(dir, name)| {
                (
                    dir.display().to_string(),
                    name.to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("/".to_owned(), "a".to_owned()),
                ("/a".to_owned(), "b".to_owned()),
                ("/a/b".to_owned(), "c".to_owned())
            ]
        );
    }
}
