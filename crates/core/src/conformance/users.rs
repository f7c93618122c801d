use std::sync::Arc;

use crate::clock::{LifecycleClock, ManualClock};
use crate::ids::UserId;
use crate::model::User;
use crate::store::{ApiToken, Store, StoreError};

/// Users have unique names; tokens are found by their hash and can be revoked.
pub async fn users_have_unique_names_and_hashed_tokens(store: Arc<dyn Store>) {
    let now = chrono::DateTime::from_timestamp_millis(
        ManualClock::starting_at_epoch().now().timestamp_millis(),
    )
    .unwrap();
    let name = format!("user-{}", UserId::new());
    let user = User {
        id: UserId::new(),
        name: name.clone(),
        created_at: now,
    };
    store.create_user(&user).await.unwrap();
    let twin = User {
        id: UserId::new(),
        name,
        created_at: now,
    };
    assert!(
        matches!(
            store.create_user(&twin).await,
            Err(StoreError::Conflict { .. })
        ),
        "names are unique"
    );
    assert_eq!(store.get_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store.get_user_by_name(&user.name).await.unwrap(),
        Some(user.clone())
    );
    assert!(store.get_user(twin.id).await.unwrap().is_none());

    let token = ApiToken {
        id: uuid::Uuid::now_v7(),
        user_id: user.id,
        token_hash: format!("{:064x}", uuid::Uuid::now_v7().as_u128()),
        name: "cli".into(),
        created_at: now,
        expires_at: Some(now + chrono::Duration::days(30)),
    };
    store.create_api_token(&token).await.unwrap();
    assert_eq!(
        store.find_api_token(&token.token_hash).await.unwrap(),
        Some(token.clone())
    );
    assert!(store.find_api_token("0000").await.unwrap().is_none());
    let orphan = ApiToken {
        id: uuid::Uuid::now_v7(),
        user_id: UserId::new(),
        token_hash: "ab".repeat(32),
        ..token.clone()
    };
    assert!(
        store.create_api_token(&orphan).await.is_err(),
        "a token needs its user"
    );
    // A user's tokens are listed newest first; another user's are not among them.
    let newer = ApiToken {
        id: uuid::Uuid::now_v7(),
        token_hash: format!("{:064x}", uuid::Uuid::now_v7().as_u128()),
        name: "browser".into(),
        created_at: now + chrono::Duration::seconds(1),
        expires_at: None,
        ..token.clone()
    };
    store.create_api_token(&newer).await.unwrap();
    assert_eq!(
        store.list_api_tokens(user.id).await.unwrap(),
        vec![newer.clone(), token.clone()]
    );
    assert!(
        store
            .list_api_tokens(UserId::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.delete_api_token(newer.id).await.unwrap());
    assert!(store.delete_api_token(token.id).await.unwrap());
    assert!(!store.delete_api_token(token.id).await.unwrap());
    assert!(store.list_api_tokens(user.id).await.unwrap().is_empty());
    assert!(
        store
            .find_api_token(&token.token_hash)
            .await
            .unwrap()
            .is_none(),
        "a revoked token is gone"
    );
}
