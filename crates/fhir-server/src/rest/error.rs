//! The one error type of the REST layer: every failure becomes an OperationOutcome with the matching HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use store::StoreError;

use super::FHIR_JSON;

/// Codes from the FHIR issue-type value set (`http://hl7.org/fhir/issue-type`) that this server emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    NotFound,
    Deleted,
    Conflict,
    Duplicate,
    Processing,
    Forbidden,
    NotSupported,
    TooLong,
    Exception,
    Transient,
    Informational,
    BusinessRule,
    Login,
}

impl IssueType {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::Conflict => "conflict",
            IssueType::Duplicate => "duplicate",
            IssueType::Processing => "processing",
            IssueType::Forbidden => "forbidden",
            IssueType::Login => "login",
            IssueType::BusinessRule => "business-rule",
            IssueType::NotSupported => "not-supported",
            IssueType::TooLong => "too-long",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Informational => "informational",
        }
    }
}

/// A failed FHIR interaction: HTTP status, issue code, a human-readable diagnostic and, when known, the element at
/// fault (FHIRPath-like, e.g. `Patient.birthDate`). Diagnostics are written by this crate and never carry SQL,
/// internal paths or submitted values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {}: {diagnostics}", code.as_str())]
pub struct FhirError {
    pub status: StatusCode,
    pub code: IssueType,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        FhirError { status, code, diagnostics: diagnostics.into(), expression: None }
    }

    /// Names the element at fault, so a client can find it without parsing the diagnostics.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    pub fn bad_request(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, diagnostics)
    }

    pub fn unprocessable(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, diagnostics)
    }

    pub fn gone(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, IssueType::Deleted, diagnostics)
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, IssueType::Conflict, diagnostics)
    }

    pub fn method_not_allowed(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, diagnostics)
    }

    pub fn not_acceptable(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, IssueType::NotSupported, diagnostics)
    }

    pub fn unsupported_media_type(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueType::NotSupported, diagnostics)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// The OperationOutcome this error renders as.
    pub fn outcome(&self) -> Value {
        let mut issue = json!({
            "severity": "error",
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if let Some(expression) = &self.expression {
            issue["expression"] = json!([expression]);
        }
        json!({ "resourceType": "OperationOutcome", "issue": [issue] })
    }
}

/// An OperationOutcome reporting success (for `Prefer: return=OperationOutcome` and deletes).
pub fn information_outcome(diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "information", "code": IssueType::Informational.as_str(), "diagnostics": diagnostics }]
    })
}

impl From<StoreError> for FhirError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::VersionConflict { resource_type, id, .. } => FhirError::new(
                StatusCode::CONFLICT,
                IssueType::Conflict,
                format!("{resource_type}/{id} was changed by another request; read it again and retry"),
            ),
            StoreError::AlreadyExists { resource_type, id } => FhirError::new(
                StatusCode::CONFLICT,
                IssueType::Duplicate,
                format!("{resource_type}/{id} already exists"),
            ),
            StoreError::NotFound { resource_type, id } => {
                FhirError::new(StatusCode::NOT_FOUND, IssueType::NotFound, format!("{resource_type}/{id} is not known"))
            }
            StoreError::Forbidden(why) => FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, why),
            StoreError::BusinessRule(why) => {
                FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::BusinessRule, why)
            }
            // The store's own wording for invalid input names only structural facts (no values), so it may be shown.
            StoreError::Invalid(why) => FhirError::bad_request(IssueType::Invalid, why),
            err if err.is_transient() => {
                tracing::warn!(error = %err, "store unavailable");
                FhirError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueType::Transient,
                    "the database is temporarily unavailable; retry later",
                )
            }
            err => {
                // Display of the store error is safe; the sqlx source (with SQL text) goes to the log only.
                tracing::error!(error = %err, source = ?std::error::Error::source(&err), "store failure");
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "internal server error")
            }
        }
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code.as_str(), "fhir request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code.as_str(), "fhir request rejected");
        }
        let body = self.outcome().to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
