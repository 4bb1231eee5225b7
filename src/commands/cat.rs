use super::{open_repo, print_json};
use crate::backend::FileRef;
use crate::cli::{CatArgs, CatKind, GlobalArgs};
use crate::error::{Error, Result};
use crate::repo::{split_pack, FileKind, Id, IndexFile, PackHeader, Snapshot};
use crate::repository::{read_key_file, Repository};

fn resolve(repo: &Repository, kind: FileKind, spec: &str) -> Result<Id> {
    let spec = spec.to_ascii_lowercase();
    let m: Vec<Id> = repo
        .backend
        .list(kind)?
        .into_iter()
        .filter(|(n, _)| n.starts_with(&spec))
        .filter_map(|(n, _)| Id::parse(&n))
        .collect();
    match m.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::usage(format!("no {} matches {spec:?}", kind.name()))),
        _ => Err(
            Error::usage(format!("several {}s match {spec:?}", kind.name()))
                .with_hint("give more digits"),
        ),
    }
}

pub fn run(g: &GlobalArgs, a: &CatArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let need = || {
        a.id.clone().ok_or_else(|| {
            Error::usage("this kind needs an id").with_hint("e.g. `cairn cat snapshot latest`")
        })
    };
    match a.kind {
        CatKind::Config => print_json(&repo.config),
        CatKind::Snapshot => {
            let (_, s): (Id, Snapshot) = repo.find_snapshot(&need()?)?;
            print_json(&s)
        }
        CatKind::Index => {
            let id = resolve(&repo, FileKind::Index, &need()?)?;
            print_json(&repo.read_sealed::<IndexFile>(FileKind::Index, &id)?)
        }
        CatKind::Pack => {
            let id = resolve(&repo, FileKind::Pack, &need()?)?;
            let f = FileRef::new(FileKind::Pack, id.to_hex());
            let bytes = repo.backend.read(&f)?;
            let (_, header) = split_pack(&bytes)
                .ok_or_else(|| Error::integrity(format!("{f} has no valid trailer")))?;
            print_json(&repo.key.unseal::<PackHeader>(header, &f)?)
        }
        CatKind::Key => {
            let id = resolve(&repo, FileKind::Key, &need()?)?;
            print_json(&read_key_file(repo.backend.as_ref(), &id.to_hex())?)
        }
    }
}
