//! exec, attach and port-forward (CONNECT on `pods/exec`, `pods/attach`, `pods/portforward`):
//! a session inside a pod runs as the pod's identity (its gMSA, token and shares), so whoever
//! opens one must be allowed to use the identity, as whoever creates the pod. The review
//! carries the options, not the pod: the handler looks the pod's labels up first.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};

use super::audit::{denied_unread, finish, invalid};
use super::envelope::connect_subject;
use super::{Authorizations, Decision, check_creator};
use crate::webhook::reason::AdmissionReason;

/// `/validate-connect`: a pod without an identity is not winflow's business; one labelled
/// `winflow.io/identity: X` is reached only by users allowed verb `use` on X.
pub fn validate_connect(request: &AdmissionRequest<DynamicObject>, access: &dyn Authorizations) -> Decision {
    let Some(doing) = doing(request) else {
        return invalid(
            request,
            "only CONNECT to pods/exec, pods/attach or pods/portforward is reviewed here".to_owned(),
        );
    };
    let (subject, looked_up) = connect_subject(request);
    if !looked_up {
        // Fail closed: without the pod's labels, its identity is unknown.
        return denied_unread(
            request,
            AdmissionReason::PodLookupFailed,
            format!(
                "winflow did not read pod {:?} to find out whose identity it runs as; denied",
                request.name
            ),
        );
    }
    let outcome = match subject.identity_name.as_deref() {
        None => Ok(()),
        Some(name) => check_creator(&subject, name, access, doing),
    };
    finish(request, &subject, outcome.map(|()| None))
}

/// What the request does to the pod, as the denial says it.
fn doing(request: &AdmissionRequest<DynamicObject>) -> Option<&'static str> {
    if request.operation != Operation::Connect {
        return None;
    }
    match request.sub_resource.as_deref()? {
        "exec" => Some("exec into pods of"),
        "attach" => Some("attach to pods of"),
        "portforward" => Some("port-forward to pods of"),
        _ => None,
    }
}
