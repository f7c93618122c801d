use std::sync::Arc;
use std::time::Duration;

use super::fixtures::Fixture;
use crate::ids::{ProjectId, UserId};
use crate::model::Project;
use crate::secret_store::{SecretKey, SecretKind, SecretStoreExt, StoredSecret};
use crate::store::{Store, StoreError};

fn sealed(f: &Fixture, key: SecretKey, bytes: &[u8], hint: &str) -> StoredSecret {
    StoredSecret {
        key,
        sealed: bytes.to_vec(),
        hint: hint.into(),
        created_at: f.now(),
        updated_at: f.now(),
    }
}

/// A secret is stored sealed under (owner, project, kind), replaced in place (keeping when it
/// was first set), read back byte for byte, and deleted once.
pub async fn secrets_are_keyed_replaced_and_deleted(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let key = SecretKey::user(f.owner, SecretKind::HetznerToken);
    assert!(store.get_secret(&key).await.unwrap().is_none());
    let first = sealed(&f, key, &[0, 1, 2, 255, 0], "abcd");
    assert_eq!(store.put_secret(&first).await.unwrap(), first);
    assert_eq!(store.get_secret(&key).await.unwrap(), Some(first.clone()));

    f.advance(Duration::from_secs(60));
    let second = sealed(&f, key, b"second", "wxyz");
    let stored = store.put_secret(&second).await.unwrap();
    assert_eq!(
        stored,
        StoredSecret {
            created_at: first.created_at,
            ..second.clone()
        },
        "a replaced secret keeps when it was first set"
    );
    assert_eq!(store.get_secret(&key).await.unwrap(), Some(stored));

    let git = SecretKey::user(f.owner, SecretKind::GitToken);
    assert!(
        store.get_secret(&git).await.unwrap().is_none(),
        "kinds are separate"
    );
    let stranger = SecretKey::user(UserId::new(), SecretKind::HetznerToken);
    assert!(
        store.get_secret(&stranger).await.unwrap().is_none(),
        "owners are separate"
    );

    assert!(store.delete_secret(&key).await.unwrap());
    assert!(!store.delete_secret(&key).await.unwrap());
    assert!(store.get_secret(&key).await.unwrap().is_none());
}

/// A project's secret is separate from its owner's default and wins over it; it needs a
/// project of the same owner, and it goes with the project.
pub async fn project_secrets_override_and_go_with_their_project(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let kind = SecretKind::GitToken;
    let user_key = SecretKey::user(f.owner, kind);
    let project_key = SecretKey::project(f.owner, f.project.id, kind);
    store
        .put_secret(&sealed(&f, user_key, b"user", "user"))
        .await
        .unwrap();
    assert_eq!(
        store
            .effective_secret(f.owner, Some(f.project.id), kind)
            .await
            .unwrap()
            .unwrap()
            .sealed,
        b"user",
        "without its own, a project uses the owner's"
    );
    store
        .put_secret(&sealed(&f, project_key, b"project", "proj"))
        .await
        .unwrap();
    assert_eq!(
        store
            .effective_secret(f.owner, Some(f.project.id), kind)
            .await
            .unwrap()
            .unwrap()
            .sealed,
        b"project"
    );
    assert_eq!(
        store.get_secret(&user_key).await.unwrap().unwrap().sealed,
        b"user",
        "the owner's default is untouched"
    );

    let unknown = SecretKey::project(f.owner, ProjectId::new(), kind);
    assert!(
        matches!(
            store.put_secret(&sealed(&f, unknown, b"x", "")).await,
            Err(StoreError::NotFound { .. })
        ),
        "a project secret needs its project"
    );
    let theirs = SecretKey::project(UserId::new(), f.project.id, kind);
    assert!(
        matches!(
            store.put_secret(&sealed(&f, theirs, b"x", "")).await,
            Err(StoreError::NotFound { .. })
        ),
        "nobody stores a secret for another owner's project"
    );

    let other = Project {
        id: ProjectId::new(),
        name: "other".into(),
        ..f.project.clone()
    };
    store.create_project(&other).await.unwrap();
    let other_key = SecretKey::project(f.owner, other.id, kind);
    store
        .put_secret(&sealed(&f, other_key, b"other", ""))
        .await
        .unwrap();
    assert!(store.delete_project(f.project.id).await.unwrap());
    assert!(
        store.get_secret(&project_key).await.unwrap().is_none(),
        "a deleted project's secrets are gone"
    );
    assert!(store.get_secret(&other_key).await.unwrap().is_some());
    assert!(store.get_secret(&user_key).await.unwrap().is_some());
}

/// The owners holding a secret of a kind, each once; concurrent puts of one key leave one row.
pub async fn secret_owners_are_listed_once_and_racing_puts_leave_one(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let kind = SecretKind::HetznerToken;
    let key = SecretKey::user(f.owner, kind);
    let puts = (0..8u8).map(|i| {
        let store = store.clone();
        let secret = sealed(&f, key, &[i], "");
        tokio::spawn(async move { store.put_secret(&secret).await })
    });
    for put in futures::future::join_all(puts).await {
        put.expect("join").expect("every racing put succeeds");
    }
    let stored = store.get_secret(&key).await.unwrap().unwrap();
    assert_eq!(stored.sealed.len(), 1, "one of the racers' bytes");
    store
        .put_secret(&sealed(
            &f,
            SecretKey::project(f.owner, f.project.id, kind),
            b"p",
            "",
        ))
        .await
        .unwrap();
    let owners = store.secret_owners(kind).await.unwrap();
    assert_eq!(
        owners.iter().filter(|o| **o == f.owner).count(),
        1,
        "each owner once"
    );
    assert!(
        !store
            .secret_owners(SecretKind::GitToken)
            .await
            .unwrap()
            .contains(&f.owner)
    );
    assert!(store.delete_secret(&key).await.unwrap());
}
