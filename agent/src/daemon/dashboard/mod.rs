//! The dashboard at `/dashboard`: one page, its script and its style sheet,
//! compiled into the binary (no CDN, nothing fetched from elsewhere). The
//! page holds no data: its script signs in with an API token and reads
//! everything from the authenticated API, following the live feed
//! (`/api/v1/events/stream`). Its content security policy allows only this
//! origin.
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The asset at `path`, when it is one.
#[must_use]
pub fn asset(path: &str) -> Option<Response> {
    let (body, kind) = match path {
        "/dashboard" | "/dashboard/" => (PAGE, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for (path, kind) in [
            ("/dashboard", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
        ] {
            let r = asset(path).expect(path);
            let ct = r.headers()[header::CONTENT_TYPE].to_str().expect("ascii");
            assert!(ct.starts_with(kind), "{path}: {ct}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert!(asset("/dashboard/../etc/passwd").is_none());
        // Every URL the page names is on this origin.
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // Untrusted text is never parsed as HTML.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }
}
