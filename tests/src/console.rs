//! The operators' console as a browser without JavaScript speaks to it: plain
//! HTTP with the session cookie carried by hand, redirects not followed, so
//! a test sees every status, `Set-Cookie` and `Location`.

use reqwest::{header, redirect::Policy, StatusCode};

use crate::admin::TestAdmin;

/// An answer of the console.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = self.body[start..].find('"').expect("end of the token");
        self.body[start..start + end].to_owned()
    }

    /// Where a redirect points.
    pub fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
    }

    /// The `Set-Cookie` header, if the answer set one.
    pub fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|value| value.to_str().ok())
    }
}

/// A console visitor, signed in or not.
pub struct Console<'a> {
    admin: &'a TestAdmin,
    http: reqwest::Client,
    /// The session cookie's value, once signed in.
    pub session: Option<String>,
}

impl<'a> Console<'a> {
    pub fn new(admin: &'a TestAdmin) -> Self {
        Self {
            admin,
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            session: None,
        }
    }

    /// This service's own origin, as a browser sends it.
    pub fn origin(&self) -> &str {
        &self.admin.base
    }

    /// Posts `token` to the sign-in form (from this origin) and keeps the
    /// session cookie it sets.
    pub async fn sign_in(&mut self, token: &str) -> Page {
        let page = self
            .post_from(self.origin(), "/admin/sign-in", &[("token", token)], &[])
            .await;
        if let Some(cookie) = page.set_cookie() {
            let value = cookie
                .split(';')
                .next()
                .and_then(|pair| pair.split_once('='))
                .map(|(_, value)| value.to_owned())
                .unwrap();
            self.session = Some(value);
        }
        page
    }

    /// Signs in, panicking unless it works.
    pub async fn signed_in(admin: &'a TestAdmin, token: &str) -> Self {
        let mut console = Self::new(admin);
        let page = console.sign_in(token).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        console
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin.base));
        if let Some(session) = &self.session {
            request = request.header(header::COOKIE, format!("clerk_admin_session={session}"));
        }
        request
    }

    async fn page(request: reqwest::RequestBuilder) -> Page {
        let response = request.send().await.unwrap();
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        Self::page(self.request(reqwest::Method::GET, path)).await
    }

    /// Posts a form from this origin.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_from(self.origin(), path, fields, &[]).await
    }

    /// Posts a form with `Origin: origin` and extra headers.
    pub async fn post_from(
        &self,
        origin: &str,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self
            .request(reqwest::Method::POST, path)
            .header(header::ORIGIN, origin)
            .form(fields);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::page(request).await
    }

    /// The CSRF token of the session, read from a page.
    pub async fn csrf(&self) -> String {
        self.get("/admin/users").await.csrf()
    }
}

impl TestAdmin {
    /// A console visitor of this service, not signed in.
    pub fn console(&self) -> Console<'_> {
        Console::new(self)
    }
}
