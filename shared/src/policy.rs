//! The policy decision for a side effect, made by Cedar: `Allow`, `Deny`
//! (naming the policies that denied) or `RequireApproval`.
//!
//! Cedar itself only allows or denies. Approval is expressed in the policies
//! through `context.approved`: a request is first evaluated as not approved;
//! if that is denied but the same request with `approved = true` is allowed,
//! a human approval is what stands between the agent and the effect. So
//!
//! ```cedar
//! permit (principal, action == Action::"shop.refund", resource)
//!     when { context.args.amount <= 50 };
//! permit (principal, action == Action::"shop.refund", resource)
//!     when { context.approved };
//! forbid (principal, action == Action::"shop.refund", resource)
//!     unless { resource.accounts.contains(context.args.account) };
//! ```
//!
//! allows small refunds, asks a human for larger ones, and denies a refund
//! to a foreign account even when someone approved it. The autonomy mode
//! comes first: `off` denies everything, `supervised` turns every `Allow`
//! into `RequireApproval`.
//!
//! The request: principal `Agent::"<agent>"` with attributes `edge` and
//! `labels` (a set of `key=value`), action `Action::"<connector>.<action>"`
//! (`Action::"mcp.<server>.<tool>"` for an MCP server's tools),
//! the resource the step declares (default `Connector::"<connector>"`), and
//! context `{ autonomy, approved, args, classification? }`.

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bundle::Autonomy;
use crate::exec::{cedar_action, render_diagnostic, ConnectorKind, PolicySpec};

/// A compiled policy set.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    policies: PolicySet,
    authorizer: std::sync::Arc<Authorizer>,
}

/// The decision for one intended side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Allow {
        /// The policies that allowed it.
        policies: Vec<String>,
    },
    /// Do not.
    Deny {
        /// The policies that denied it (empty when none permitted it).
        policies: Vec<String>,
        /// Why, for the audit log and the operator.
        reason: String,
    },
    /// Only with a human's approval.
    RequireApproval {
        /// The policies that would allow it once approved.
        policies: Vec<String>,
        /// Why approval is needed.
        reason: String,
    },
}

impl Decision {
    /// The decision's name as audit events carry it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::RequireApproval { .. } => "require_approval",
        }
    }
}

/// What a side effect is, as the policy sees it.
#[derive(Debug, Clone)]
pub struct ActionRequest<'a> {
    /// The agent asking.
    pub agent: &'a str,
    /// The edge it runs on.
    pub edge: &'a str,
    /// The edge's labels, `key=value`.
    pub labels: &'a [String],
    /// The connector.
    pub connector: &'a str,
    /// What kind of connector it is (an MCP server's tools are named
    /// `mcp.<server>.<tool>`).
    pub kind: ConnectorKind,
    /// The connector's action.
    pub action: &'a str,
    /// The resource: entity type, id and attributes (a JSON object).
    pub resource: (&'a str, &'a str, &'a Value),
    /// The intent's typed arguments.
    pub args: &'a Value,
    /// The data classification of what the step handles, when known.
    pub classification: Option<&'a str>,
    /// The autonomy mode in force.
    pub autonomy: Autonomy,
}

/// Why a policy set cannot be compiled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Cedar policies do not parse: {0}")]
pub struct PolicyError(String);

impl PolicyEngine {
    /// Compiles the bundle's policies (validated against the schema at publish).
    pub fn new(spec: &PolicySpec) -> Result<Self, PolicyError> {
        let mut policies = PolicySet::new();
        let parsed = PolicySet::from_str(&spec.policies).map_err(|err| PolicyError(render_diagnostic(&err)))?;
        // Name each policy by its `@id` annotation where it has one, so a
        // decision cites policies by the names their authors gave them.
        for policy in parsed.policies() {
            let named = match policy.annotation("id") {
                Some(id) => policy.new_id(cedar_policy::PolicyId::new(id)),
                None => policy.clone(),
            };
            policies.add(named).map_err(|err| PolicyError(render_diagnostic(&err)))?;
        }
        Ok(Self { policies, authorizer: std::sync::Arc::new(Authorizer::new()) })
    }

    /// An engine with no policies: every side effect is denied.
    pub fn deny_all() -> Self {
        Self { policies: PolicySet::new(), authorizer: std::sync::Arc::new(Authorizer::new()) }
    }

    /// Decides whether the side effect may happen without an approval.
    pub fn decide(&self, request: &ActionRequest<'_>) -> Decision {
        if request.autonomy <= Autonomy::Off {
            return Decision::Deny {
                policies: Vec::new(),
                reason: format!("autonomy is {} (the kill switch): every side effect is denied", request.autonomy),
            };
        }
        match self.evaluate(request, false) {
            Ok((true, policies)) if request.autonomy == Autonomy::Supervised => Decision::RequireApproval {
                policies,
                reason: "autonomy is supervised: every side effect needs approval".into(),
            },
            Ok((true, policies)) => Decision::Allow { policies },
            Ok((false, denied_by)) => match self.evaluate(request, true) {
                Ok((true, policies)) => Decision::RequireApproval {
                    policies,
                    reason: "policy allows it only with a human's approval".into(),
                },
                _ => Decision::Deny { reason: deny_reason(&denied_by), policies: denied_by },
            },
            Err(reason) => Decision::Deny { policies: Vec::new(), reason },
        }
    }

    /// Decides a side effect a human approved: allowed only when the policy
    /// allows it as approved (a `forbid` still wins) and autonomy is not off.
    pub fn decide_approved(&self, request: &ActionRequest<'_>) -> Decision {
        if request.autonomy <= Autonomy::Off {
            return self.decide(request);
        }
        match self.evaluate(request, true) {
            Ok((true, policies)) => Decision::Allow { policies },
            Ok((false, denied_by)) => Decision::Deny { reason: deny_reason(&denied_by), policies: denied_by },
            Err(reason) => Decision::Deny { policies: Vec::new(), reason },
        }
    }

    /// Evaluates once; `Ok((allowed, determining policies))`.
    fn evaluate(&self, request: &ActionRequest<'_>, approved: bool) -> Result<(bool, Vec<String>), String> {
        let uid = |ty: &str, id: &str| -> Result<EntityUid, String> {
            let type_name = cedar_policy::EntityTypeName::from_str(ty)
                .map_err(|err| format!("`{ty}` is not a Cedar entity type: {}", render_diagnostic(&err)))?;
            Ok(EntityUid::from_type_name_and_id(type_name, cedar_policy::EntityId::new(id)))
        };
        let principal = uid("Agent", request.agent)?;
        let action = uid("Action", &cedar_action(request.connector, request.kind, request.action))?;
        let (resource_type, resource_id, resource_attrs) = request.resource;
        let resource = uid(resource_type, resource_id)?;
        let entities = json!([
            {
                "uid": { "type": "Agent", "id": request.agent },
                "attrs": { "edge": request.edge, "labels": request.labels },
                "parents": [],
            },
            {
                "uid": { "type": resource_type, "id": resource_id },
                "attrs": resource_attrs,
                "parents": [],
            },
        ]);
        let entities = Entities::from_json_value(entities, None)
            .map_err(|err| format!("the request's entities are invalid: {}", render_diagnostic(&err)))?;
        let mut context = json!({
            "autonomy": request.autonomy.as_str(),
            "approved": approved,
            "args": request.args,
        });
        if let Some(classification) = request.classification {
            context["classification"] = json!(classification);
        }
        let context = Context::from_json_value(context, None)
            .map_err(|err| format!("the request's context is invalid: {}", render_diagnostic(&err)))?;
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|err| format!("the request is invalid: {}", render_diagnostic(&err)))?;
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
        let policies = response.diagnostics().reason().map(|id| id.to_string()).collect();
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        if !allowed && !errors.is_empty() {
            return Err(format!("policy evaluation failed: {}", errors.join("; ")));
        }
        Ok((allowed, policies))
    }
}

fn deny_reason(denied_by: &[String]) -> String {
    if denied_by.is_empty() {
        "no policy permits it".into()
    } else {
        format!("forbidden by {}", denied_by.join(", "))
    }
}

#[cfg(test)]
mod tests;
