//! Signed, Clerk-shaped deliveries.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use rand::RngCore as _;
use shared::svix::{sign, SigningKey};

/// A fresh random `whsec_…` secret.
pub fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// A fresh svix-like message id.
pub fn new_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// One delivery: headers and body.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

impl Delivery {
    /// A delivery of `body` signed now with `secret`.
    pub fn signed(secret: &str, body: Vec<u8>) -> Self {
        Self::signed_at(secret, &new_id(), now(), body)
    }

    /// Posts it to the ingress at `addr` with the `svix-*` headers; returns
    /// the status.
    pub async fn post_to(&self, addr: &str) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(format!("http://{addr}/webhooks/clerk"))
            .header("svix-id", &self.id)
            .header("svix-timestamp", &self.timestamp)
            .header("svix-signature", &self.signature)
            .body(self.body.clone())
            .send()
            .await
            .expect("request")
            .status()
    }

    pub fn signed_at(secret: &str, id: &str, timestamp: i64, body: Vec<u8>) -> Self {
        let key = SigningKey::parse(secret).expect("test secret parses");
        Self {
            id: id.to_owned(),
            timestamp: timestamp.to_string(),
            signature: sign(&key, id, timestamp, &body),
            body,
        }
    }
}

/// A `user.created` event of about 1.4 KB, like Clerk sends.
pub fn user_created(user_id: &str) -> Vec<u8> {
    let email_id = format!("idn_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "birthday": "",
            "created_at": 1_716_883_200_000_i64,
            "email_addresses": [{
                "email_address": format!("{user_id}@example.org"),
                "id": email_id,
                "linked_to": [],
                "object": "email_address",
                "reserved": false,
                "verification": {"attempts": null, "expire_at": null, "status": "verified", "strategy": "email_code"}
            }],
            "external_accounts": [],
            "external_id": null,
            "first_name": "Ada",
            "gender": "",
            "id": user_id,
            "image_url": "https://img.example.org/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2ltYWdlcy5leGFtcGxlLm9yZy9hdmF0YXIucG5nIn0",
            "last_name": "Lovelace",
            "last_sign_in_at": null,
            "object": "user",
            "password_enabled": true,
            "phone_numbers": [],
            "primary_email_address_id": email_id,
            "primary_phone_number_id": null,
            "primary_web3_wallet_id": null,
            "private_metadata": {},
            "profile_image_url": "https://www.example.org/avatar.png",
            "public_metadata": {},
            "two_factor_enabled": false,
            "unsafe_metadata": {},
            "updated_at": 1_716_883_200_000_i64,
            "username": null,
            "web3_wallets": []
        },
        "event_attributes": {"http_request": {"client_ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"}},
        "instance_id": "ins_2exampleinstance",
        "object": "event",
        "timestamp": 1_716_883_200_000_i64,
        "type": "user.created"
    }))
    .expect("serialize")
}

/// A `user.created` or `user.updated` event with the given primary email and
/// Clerk `updated_at` (ms).
pub fn user_event(event_type: &str, user_id: &str, email: &str, updated_at: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "id": user_id,
            "object": "user",
            "email_addresses": [
                {"id": "idn_other", "email_address": format!("other+{user_id}@example.org"), "object": "email_address"},
                {"id": "idn_primary", "email_address": email, "object": "email_address"}
            ],
            "primary_email_address_id": "idn_primary",
            "first_name": "Grace",
            "last_name": null,
            "private_metadata": null,
            "public_metadata": {},
            "unsafe_metadata": {},
            "created_at": 1_716_883_200_000_i64,
            "updated_at": updated_at
        },
        "object": "event",
        "type": event_type,
        "timestamp": updated_at,
        "instance_id": "ins_2exampleinstance"
    }))
    .expect("serialize")
}

/// A `user.deleted` event: Clerk sends only a deleted-object marker.
pub fn user_deleted(user_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {"deleted": true, "id": user_id, "object": "user"},
        "object": "event",
        "type": "user.deleted",
        "timestamp": 1_716_883_200_000_i64,
        "instance_id": "ins_2exampleinstance"
    }))
    .expect("serialize")
}

/// The payer of a billing event: a user (`user_…`) or an organization.
fn payer(owner: &str) -> serde_json::Value {
    if owner.starts_with("org_") {
        serde_json::json!({"id": "cpayer_org", "object": "commerce_payer", "user_id": "", "organization_id": owner,
                           "organization_name": "Example Org", "first_name": "", "last_name": "", "email": "billing@example.org"})
    } else {
        serde_json::json!({"id": "cpayer_user", "object": "commerce_payer", "user_id": owner, "organization_id": "",
                           "organization_name": "", "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org"})
    }
}

/// A `subscriptionItem.*` event for `owner`'s item of plan `slug`.
pub fn subscription_item(
    event_type: &str,
    item_id: &str,
    owner: &str,
    slug: &str,
    status: &str,
    period_start: Option<i64>,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "id": item_id,
            "object": "commerce_subscription_item",
            "status": status,
            "is_free_trial": false,
            "interval": "month",
            "period_start": period_start,
            "period_end": period_start.map(|p| p + 30 * 86_400_000),
            "plan_id": format!("cplan_{slug}"),
            "plan": {"id": format!("cplan_{slug}"), "slug": slug, "name": slug, "is_recurring": true,
                     "amount": 1000, "currency": "usd"},
            "payer": payer(owner),
            "subscription_id": "csub_1",
            "seats": null
        },
        "object": "event",
        "type": event_type,
        "timestamp": 1_716_883_200_000_i64,
        "instance_id": "ins_2exampleinstance"
    }))
    .expect("serialize")
}

/// A `paymentAttempt.updated` event paying for `items` (`(item id, slug, period_start)`).
pub fn payment_attempt(
    attempt_id: &str,
    status: &str,
    owner: &str,
    items: &[(&str, &str, Option<i64>)],
) -> Vec<u8> {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(id, slug, period_start)| {
            serde_json::json!({
                "id": id, "object": "commerce_subscription_item", "status": "active",
                "plan": {"id": format!("cplan_{slug}"), "slug": slug, "amount": 500, "currency": "usd"},
                "plan_period": "month", "period_start": period_start, "period_end": null,
                "credits": {"proration": null, "payer": null, "total": null}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "data": {
            "id": attempt_id,
            "payment_id": format!("cpa_{attempt_id}"),
            "status": status,
            "charge_type": "checkout",
            "paid_at": 1_716_883_200_000_i64,
            "payer": payer(owner),
            "payee": {"id": "cpayee_1"},
            "totals": {"grand_total": {"amount": 500, "amount_formatted": "5.00", "currency": "USD", "currency_symbol": "$"}},
            "subscription_items": items
        },
        "object": "event",
        "type": "paymentAttempt.updated",
        "timestamp": 1_716_883_200_000_i64,
        "instance_id": "ins_2exampleinstance"
    }))
    .expect("serialize")
}
