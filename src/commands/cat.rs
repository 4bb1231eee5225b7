use super::{open_repo, print_json};
use crate::backend::FileRef;
use crate::cli::{CatArgs, CatKind, GlobalArgs};
use crate::error::{Error, Result};
use crate::repo::{
    split_pack, FileId, IndexFile, IndexId, KeyId, PackHeader, PackId, Snapshot, SnapshotId,
};
use crate::repository::{read_key_file, Repository};

fn resolve<I: FileId>(repo: &Repository, spec: &str) -> Result<I> {
    let kind = I::KIND;
    let spec = spec.to_ascii_lowercase();
    let m: Vec<I> = repo
        .backend
        .list(kind)?
        .into_iter()
        .filter(|(n, _)| n.starts_with(&spec))
        .filter_map(|(n, _)| crate::repo::Id::parse(&n).map(I::from_raw))
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
            let (_, s): (SnapshotId, Snapshot) = repo.find_snapshot(&need()?)?;
            print_json(&s)
        }
        CatKind::Index => {
            let id: IndexId = resolve(&repo, &need()?)?;
            print_json(&repo.read_sealed::<IndexFile>(id)?)
        }
        CatKind::Pack => {
            let id: PackId = resolve(&repo, &need()?)?;
            let f = FileRef::of(id);
            let bytes = repo.backend.read(&f)?;
            let (_, header) = split_pack(&bytes)
                .ok_or_else(|| Error::integrity(format!("{f} has no valid trailer")))?;
            print_json(&repo.key.unseal::<PackHeader>(header, &f)?)
        }
        CatKind::Key => {
            let id: KeyId = resolve(&repo, &need()?)?;
            print_json(&read_key_file(repo.backend.as_ref(), &id.to_hex())?)
        }
    }
}
