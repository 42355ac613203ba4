//! A repository's tag list (`GET /v2/<name>/tags/list`), page by page.
//!
//! Promises:
//! - The whole list comes from one endpoint: a mirror failing on any page hands the listing to
//!   the next from the start.
//! - A registry cannot make the listing endless or large: at most [`MAX_TAGS`] tags,
//!   [`MAX_TAG_LIST_BYTES`] of JSON and [`MAX_TAG_PAGES`] pages; a `Link` that loops, leaves the
//!   endpoint or repeats a `last` is refused as [`RegistryError::TagList`].

use reqwest::Method;
use reqwest::header::HeaderMap;

use super::endpoints::Endpoint;
use super::error::{RegistryError, TagListProblem};
use super::repository::Repository;

impl Repository {
    /// Every tag of the repository, following `Link` pagination. The whole list comes from one
    /// endpoint: a mirror failing on any page hands the listing to the next from the start.
    ///
    /// # Errors
    ///
    /// What the registry answered ([`RegistryError::NameUnknown`] for no such repository),
    /// [`RegistryError::TagList`] for a list that loops, links elsewhere or passes the limits, or
    /// why no endpoint answered.
    pub async fn tags(&self) -> Result<Vec<String>, RegistryError> {
        self.first_success("tag list", |endpoint, attempts| {
            self.tags_at(endpoint, attempts)
        })
        .await
    }

    async fn tags_at(
        &self,
        endpoint: &Endpoint,
        attempts: u32,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let base = self.client.base_url(endpoint).await?;
        let mut pages = TagPages::new(&self.name, &base);
        let mut tags = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(format!("v2/{}/tags/list?n={TAG_PAGE_SIZE}", self.name));
        let scope = self.scope();
        while let Some(path) = next.take() {
            let resp = self
                .client
                .execute_at(
                    endpoint,
                    &scope,
                    Method::GET,
                    &path,
                    HeaderMap::new(),
                    attempts,
                )
                .await?;
            let url = resp.url().clone();
            pages.fetched(&url)?;
            let link = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link);
            let body = match self
                .client
                .read_capped(resp, MAX_TAG_LIST_BYTES - bytes, url.as_str())
                .await
            {
                Err(RegistryError::TooLarge { .. }) => {
                    return Err(pages.refuse(
                        &url,
                        TagListProblem::TooManyBytes {
                            limit: MAX_TAG_LIST_BYTES,
                        },
                    ));
                }
                other => other?,
            };
            bytes += body.len();
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Status {
                    url: url.to_string(),
                    status: 200,
                    code: None,
                    message: Some(format!("invalid tag list: {e}")),
                })?;
            let page = list.tags.unwrap_or_default();
            if tags.len().saturating_add(page.len()) > MAX_TAGS {
                return Err(pages.refuse(&url, TagListProblem::TooManyTags { limit: MAX_TAGS }));
            }
            tags.extend(page);
            next = match link {
                Some(target) => Some(pages.next(&url, &target)?),
                None => None,
            };
        }
        Ok(tags)
    }
}

/// Tags asked for per page (`n`).
const TAG_PAGE_SIZE: usize = 100;
/// The most tags one repository may list. Real repositories with tens of thousands exist; a list
/// longer than this is a registry trying to fill our memory.
const MAX_TAGS: usize = 100_000;
/// The whole list's JSON, every page together: 100,000 tags of up to 128 characters fit.
const MAX_TAG_LIST_BYTES: usize = 16 << 20;
/// Pages, whatever their size: a registry sending endless empty pages is stopped too.
const MAX_TAG_PAGES: usize = 10_000;

/// Where a tag listing has been, so a `Link` that loops, leaves the registry or never ends is
/// refused instead of followed.
struct TagPages<'a> {
    repository: &'a str,
    base: &'a url::Url,
    urls: std::collections::HashSet<String>,
    lasts: std::collections::HashSet<String>,
}

impl<'a> TagPages<'a> {
    fn new(repository: &'a str, base: &'a url::Url) -> Self {
        TagPages {
            repository,
            base,
            urls: Default::default(),
            lasts: Default::default(),
        }
    }

    fn refuse(&self, url: &url::Url, problem: TagListProblem) -> RegistryError {
        RegistryError::TagList {
            repository: self.repository.to_owned(),
            url: url.to_string(),
            problem,
        }
    }

    /// Notes a page as fetched (at the URL it was finally served from).
    fn fetched(&mut self, url: &url::Url) -> Result<(), RegistryError> {
        if self.urls.len() >= MAX_TAG_PAGES {
            return Err(self.refuse(
                url,
                TagListProblem::TooManyPages {
                    limit: MAX_TAG_PAGES,
                },
            ));
        }
        self.urls.insert(url.to_string());
        Ok(())
    }

    /// The path (relative to the endpoint's base) of the page `target` links to from `current`.
    /// A link is resolved against the page it came in, as RFC 8288 says; it must stay on the
    /// endpoint (same scheme, host, port, under its base path), lead somewhere not yet listed
    /// and name a `last` not yet seen.
    fn next(&mut self, current: &url::Url, target: &str) -> Result<String, RegistryError> {
        let Ok(mut url) = current.join(target) else {
            return Err(self.refuse(current, TagListProblem::LinkElsewhere));
        };
        let same_origin = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        if same_origin && !url.path().starts_with(self.base.path()) {
            // A mirror under a path (`https://cache.lan/hub/`) may write its links as the
            // registry would, from `/v2/`: they are meant under its base.
            if let Some(api) = url
                .path()
                .strip_prefix('/')
                .filter(|p| p.starts_with("v2/"))
            {
                let query = url.query().map(str::to_owned);
                if let Ok(mut under) = self.base.join(api) {
                    under.set_query(query.as_deref());
                    url = under;
                }
            }
        }
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(self.refuse(&url, TagListProblem::LinkElsewhere));
        }
        if self.urls.contains(url.as_str()) {
            return Err(self.refuse(&url, TagListProblem::Loop));
        }
        if let Some((_, last)) = url.query_pairs().find(|(k, _)| k == "last")
            && !self.lasts.insert(last.into_owned())
        {
            return Err(self.refuse(&url, TagListProblem::Loop));
        }
        let path = &url.path()[self.base.path().len()..];
        Ok(match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        })
    }
}

/// The target of `Link: </v2/x/tags/list?last=a&n=100>; rel="next"`, as written.
fn parse_next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        Some(target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_headers() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=t99&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=t99&n=100")
        );
        assert_eq!(
            parse_next_link(r#"<https://r.example/v2/a/tags/list?last=x>; rel="next""#).as_deref(),
            Some("https://r.example/v2/a/tags/list?last=x")
        );
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=x>; rel="prev""#),
            None
        );
    }

    #[test]
    fn tag_list_links_stay_on_the_endpoint_and_never_loop() {
        let base: url::Url = "https://cache.lan/hub/".parse().unwrap();
        let first: url::Url = "https://cache.lan/hub/v2/a/tags/list?n=100"
            .parse()
            .unwrap();
        let mut pages = TagPages::new("a", &base);
        pages.fetched(&first).unwrap();
        // Relative to the page, and from /v2/ as a registry writes them: both under the base.
        assert_eq!(
            pages.next(&first, "list?last=t1&n=100").unwrap(),
            "v2/a/tags/list?last=t1&n=100"
        );
        assert_eq!(
            pages.next(&first, "/v2/a/tags/list?last=t2&n=100").unwrap(),
            "v2/a/tags/list?last=t2&n=100"
        );
        let problem = |r: Result<String, RegistryError>| match r {
            Err(RegistryError::TagList { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        // A `last` seen before, or the first page again.
        assert_eq!(
            problem(pages.next(&first, "/hub/v2/a/tags/list?last=t1&n=5")),
            TagListProblem::Loop
        );
        assert_eq!(
            problem(pages.next(&first, "/hub/v2/a/tags/list?n=100")),
            TagListProblem::Loop
        );
        for elsewhere in [
            "https://evil.example/hub/v2/a/tags/list?last=x",
            "http://cache.lan/hub/v2/a/tags/list?last=y",
            "https://cache.lan:8443/hub/v2/a/tags/list?last=z",
            "/admin?last=w",
        ] {
            assert_eq!(
                problem(pages.next(&first, elsewhere)),
                TagListProblem::LinkElsewhere,
                "{elsewhere}"
            );
        }
    }
}
