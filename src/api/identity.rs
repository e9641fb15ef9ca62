//! `WindowsTaskIdentity`: which Windows identity (gMSA) an Airflow task may run as.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares the Active Directory identity (a group Managed Service Account) that Airflow
/// tasks matching `airflow.dagIds` / `airflow.taskIds` run as on Windows nodes. winflow turns
/// it into a gMSA credential spec, RBAC that lets only this identity's service account use
/// it, and Airflow pod templates.
// Each `printcolumn(...)` repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "winflow.io",
    version = "v1alpha1",
    kind = "WindowsTaskIdentity",
    namespaced,
    status = "WindowsTaskIdentityStatus",
    shortname = "wti",
    category = "winflow",
    doc = "A Windows identity (Active Directory gMSA) that matching Airflow tasks run as, with the credential spec, RBAC, service account and pod templates winflow keeps for it.",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.gmsa.account"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    // A "date" column would show a future time as <invalid> in kubectl; the time itself is clearer.
    printcolumn(name = "Token-Expires", type_ = "string", json_path = ".status.token.expiresAt"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.pods.running"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.pods.failed"),
    printcolumn(name = "Exposed", type_ = "integer", json_path = ".status.exposure.pods"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WindowsTaskIdentitySpec {
    /// The Active Directory domain the gMSA belongs to.
    pub domain: ActiveDirectoryDomain,
    /// The group Managed Service Account(s) the task runs as.
    pub gmsa: GmsaAccounts,
    /// How nodes that are not joined to the domain retrieve the gMSA password (Windows
    /// "portable" container credential guard). Leave unset for domain-joined nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_account: Option<HostAccount>,
    /// The Kubernetes service account task pods run as; only it may use the credential spec.
    pub service_account: ServiceAccountSettings,
    /// Which Airflow DAGs and tasks may use this identity, and the images of its templates.
    pub airflow: AirflowSettings,
    /// Settings of the Windows task pod.
    #[serde(default)]
    pub pod: TaskPodSettings,
    /// SMB shares (WindowsShare resources in the same namespace) mounted into Windows task pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareMount>,
    /// A short-lived OIDC access token (Entra ID, Okta, ...) kept fresh in a Secret and handed
    /// to the tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSettings>,
    /// Who may create pods that run as this identity: a pod labelled
    /// `winflow.io/identity: <name>` is admitted only when its creator may `use` this
    /// WindowsTaskIdentity. winflow keeps the Role `winflow-<name>-use` that grants exactly
    /// that, and binds `creators` to it in the RoleBinding of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSettings>,
}

/// Who may create this identity's pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSettings {
    /// Who may create this identity's pods: the Airflow scheduler's service account for
    /// KubernetesExecutor pods, the worker's for KubernetesPodOperator pods. Anyone else can be
    /// granted by binding the Role `winflow-<name>-use` themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creators: Vec<AccessSubject>,
}

/// A user, group or service account, as an RBAC RoleBinding names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSubject {
    /// `User`, `Group` or `ServiceAccount`.
    #[schemars(extend("enum" = ["User", "Group", "ServiceAccount"]))]
    pub kind: String,
    /// Name of the user, group or service account.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Namespace of a service account (kind `ServiceAccount` only). Defaults to the identity's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// API group of the subject kind; winflow fills it in as RBAC wants it
    /// (`rbac.authorization.k8s.io` for User and Group, empty for ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
}

/// Subject kinds a RoleBinding accepts.
pub const SUBJECT_USER: &str = "User";
pub const SUBJECT_GROUP: &str = "Group";
pub const SUBJECT_SERVICE_ACCOUNT: &str = "ServiceAccount";
/// The API group RBAC wants on User and Group subjects (and none on ServiceAccount subjects).
pub const RBAC_API_GROUP: &str = "rbac.authorization.k8s.io";

/// An Active Directory domain, as a credential spec names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveDirectoryDomain {
    /// Fully qualified DNS name of the domain, for example `corp.example.com`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))+$")
    )]
    pub dns_name: String,
    /// NetBIOS name of the domain (at most 15 characters), for example `CORP`.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r#"^[^\\/:*?"<>|.\s][^\\/:*?"<>|\s]{0,14}$"#)
    )]
    pub netbios_name: String,
    /// DNS name of the forest root domain. Defaults to `dnsName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))+$")
    )]
    pub forest_name: Option<String>,
    /// Security identifier of the domain, `S-1-5-21-<a>-<b>-<c>`
    /// (`Get-ADDomain | Select DomainSID`).
    #[schemars(regex(pattern = r"^S-1-5-21-[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,10}$"))]
    pub sid: String,
    /// Object GUID of the domain, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    /// (`Get-ADDomain | Select ObjectGUID`).
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))]
    pub guid: String,
}

/// The gMSA accounts named in the credential spec.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GmsaAccounts {
    /// sAMAccountName of the gMSA without the trailing `$` (at most 15 characters).
    #[schemars(length(min = 1, max = 15), regex(pattern = r#"^[^"/\\\[\]:;|=,+*?<>@$\s]+$"#))]
    pub account: String,
    /// Further gMSAs the container may use (each at most 15 characters, without `$`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 15), regex(pattern = r#"^[^"/\\\[\]:;|=,+*?<>@$\s]+$"#)))]
    pub additional_accounts: Vec<String>,
}

/// Where a node that is not domain-joined gets the credentials of a domain account allowed to
/// retrieve the gMSA password. Exactly one kind must be set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_host_account_kind)]
pub struct HostAccount {
    /// Azure Key Vault plugin (AKS): the secret holds `<domain>\<user>:<password>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_key_vault: Option<AzureKeyVaultHostAccount>,
    /// AWS Secrets Manager plugin (EKS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secrets_manager: Option<AwsSecretsManagerHostAccount>,
    /// Kubernetes Secret plugin: the secret lives in this identity's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_secret: Option<KubernetesSecretHostAccount>,
    /// Any other CCG plugin, by its COM class GUID and input string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomHostAccount>,
    /// Version of the portable container credential guard protocol.
    #[serde(default = "default_portable_ccg_version")]
    pub portable_ccg_version: String,
}

/// Azure Key Vault host account plugin settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureKeyVaultHostAccount {
    /// URI of the Key Vault secret, `https://<vault>.vault.azure.net/secrets/<name>`.
    #[schemars(regex(pattern = r"^https://[^\s;]+$"))]
    pub secret_uri: String,
    /// Object ID of the managed identity that may read the secret.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))]
    pub managed_identity_object_id: String,
}

/// AWS Secrets Manager host account plugin settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSecretsManagerHostAccount {
    /// ARN of the secret, `arn:aws:secretsmanager:<region>:<account>:secret:<name>`.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:secretsmanager:[^\s]+$"))]
    pub secret_arn: String,
}

/// Kubernetes Secret host account plugin settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSecretHostAccount {
    /// Name of the Secret, in this identity's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A CCG plugin winflow has no shortcut for.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomHostAccount {
    /// COM class GUID of the plugin, with braces: `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
    #[schemars(regex(pattern = r"^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$"))]
    pub plugin_guid: String,
    /// Input string handed to the plugin.
    #[schemars(length(min = 1))]
    pub plugin_input: String,
}

/// The Kubernetes service account of the task pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.name != 'default'",
        "fieldPath": ".name",
        "message": "\"default\" is the service account of every pod that names none; give the identity a service account of its own"
    }
]))]
pub struct ServiceAccountSettings {
    /// Name of the service account, in this identity's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Create the service account. An existing service account that winflow does not manage
    /// is used as it is and never taken over.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Annotations of the created service account (for example a cloud workload identity).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which Airflow work may use the identity, and the images of the pod templates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AirflowSettings {
    /// Glob patterns (`*`, `?`, `[abc]`) of the DAG ids allowed to use this identity.
    #[schemars(length(min = 1), inner(length(min = 1, max = 250)))]
    pub dag_ids: Vec<String>,
    /// Glob patterns of the task ids allowed to use this identity.
    #[serde(default = "default_task_ids")]
    #[schemars(length(min = 1), inner(length(min = 1, max = 250)))]
    pub task_ids: Vec<String>,
    /// Image of the `base` container in the Windows pod template; the KubernetesPodOperator's
    /// `image=` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Image of the Linux Airflow worker in the executor pod template. When unset, Airflow's
    /// configured worker image is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub worker_image: Option<String>,
}

/// Settings of the Windows task pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.runAsUserName) || !self.runAsUserName.matches('(?i)^containeradministrator$') || (has(self.allowAdministrator) && self.allowAdministrator)",
        "fieldPath": ".runAsUserName",
        "message": "ContainerAdministrator is refused unless spec.pod.allowAdministrator is true (least privilege: use ContainerUser or a domain account)"
    },
    {
        "rule": "!has(self.nodeSelector) || !('kubernetes.io/os' in self.nodeSelector) || self.nodeSelector['kubernetes.io/os'] == 'windows'",
        "fieldPath": ".nodeSelector",
        "messageExpression": "'kubernetes.io/os is \"' + self.nodeSelector['kubernetes.io/os'] + '\", but Windows task pods run only on kubernetes.io/os=windows'"
    }
]))]
pub struct TaskPodSettings {
    /// Windows user the containers run as. `ContainerAdministrator` requires
    /// `allowAdministrator: true`.
    #[serde(default = "default_run_as_user_name")]
    #[schemars(length(min = 1, max = 256))]
    pub run_as_user_name: String,
    /// Allow `runAsUserName: ContainerAdministrator`.
    #[serde(default)]
    pub allow_administrator: bool,
    /// Extra node selector terms; `kubernetes.io/os: windows` is always set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the Windows task pod (for example for tainted Windows node pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Environment variables of the `base` container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Resource requests and limits of the `base` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for TaskPodSettings {
    fn default() -> Self {
        Self {
            run_as_user_name: default_run_as_user_name(),
            allow_administrator: false,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            env: Vec::new(),
            resources: None,
        }
    }
}

impl TaskPodSettings {
    /// Whether the settings ask for the Windows container administrator account.
    pub fn runs_as_administrator(&self) -> bool {
        self.run_as_user_name.eq_ignore_ascii_case(CONTAINER_ADMINISTRATOR)
    }
}

/// The built-in Windows container account with administrative rights.
pub const CONTAINER_ADMINISTRATOR: &str = "ContainerAdministrator";

/// A WindowsShare mounted into the Windows task pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareMount {
    /// Name of a WindowsShare in this identity's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Where the share appears in the container, for example `C:\data\reports`.
    #[schemars(length(min = 1))]
    pub mount_path: String,
    /// Mount the share read-only.
    #[serde(default = "default_true")]
    pub read_only: bool,
}

/// An OIDC access token obtained with the client-credentials grant and kept fresh.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.clientSecretRef) != has(self.workloadIdentity)",
        "message": "exactly one of clientSecretRef or workloadIdentity must be set"
    },
    {
        "rule": "!has(self.secretName) || !has(self.clientSecretRef) || self.secretName != self.clientSecretRef.name",
        "fieldPath": ".secretName",
        "messageExpression": "'\"' + self.secretName + '\" is the client secret\\'s Secret; winflow writes the token to a Secret of its own'"
    }
]))]
pub struct TokenSettings {
    /// Issuer URL (`https://`), exactly as the provider's discovery document states its
    /// `issuer`, for example `https://login.microsoftonline.com/<tenant>/v2.0`.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub issuer_url: String,
    /// OAuth client id.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// Secret key holding the client secret (set this or `workloadIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyReference>,
    /// Authenticate with a Kubernetes service account token (workload identity federation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,
    /// Scopes to request, for example `api://reports/.default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// How long before expiry the token is renewed (a duration such as `20m`). Defaults to
    /// one third of the lifetime the provider granted; never less than `minValidity` and never
    /// more than half the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// No pod is admitted with a token that expires sooner than this (a duration such as
    /// `5m`); a pod may ask for more with the annotation `winflow.io/min-token-validity`.
    #[serde(default = "default_min_validity")]
    pub min_validity: String,
    /// Name of the Secret holding the token. Defaults to `<name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// A key in a Secret of the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// Client authentication by a projected service account token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// Audience of the service account token.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Lifetime of the service account token, in seconds.
    #[serde(default = "default_expiration_seconds")]
    #[schemars(range(min = 600, max = 86400))]
    pub expiration_seconds: i64,
}

/// What winflow observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsTaskIdentityStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `CredentialSpecReady`, `AccessGranted`, `PodTemplateReady`, `SharesReady`,
    /// `TokenReady`, `TasksHealthy`, `Enforced`, `CredentialsContained`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the GMSACredentialSpec (cluster scoped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_spec_name: Option<String>,
    /// Name of the service account task pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Where the Airflow pod templates are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateStatus>,
    /// State of the OIDC token (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,
    /// Task pods running as this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsStatus>,
    /// Pods of this namespace that name a credential of this identity they would not be
    /// admitted with today (for example created before the identity, its share or the
    /// `winflow.io/enforce` label); absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureStatus>,
}

/// Pods that name a credential of this identity they may not reach.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposureStatus {
    /// How many pods.
    pub pods: i32,
    /// The first of them by name (at most five), with what each names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<ExposedPod>,
}

/// A pod that names a credential of this identity.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposedPod {
    /// Pod name.
    pub pod: String,
    /// What it names, and where.
    pub references: Vec<ExposedReference>,
}

/// One place where a pod names a credential of this identity.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposedReference {
    /// Where in the pod spec, for example `volume "token" (secret)` or `env T of container "base"`.
    pub place: String,
    /// `Secret` or `PersistentVolumeClaim`.
    pub kind: String,
    /// Name of the Secret or claim.
    pub name: String,
    /// The admission rule a new pod like it is denied by: `TokenSecretNotOwn`,
    /// `ClientSecretReference`, `HostAccountSecretReference` or `ShareNotListed`.
    pub rule: String,
}

/// Where the Airflow pod templates are.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateStatus {
    /// ConfigMap holding the templates.
    pub config_map_name: String,
    /// Key of the Windows (KubernetesPodOperator) template.
    pub windows_key: String,
    /// Key of the Linux KubernetesExecutor worker template.
    pub executor_key: String,
}

/// State of the OIDC token.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the next refresh is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// When the token was last refreshed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,
    /// Refresh failures since the last success.
    #[serde(default)]
    pub failed_attempts: i32,
    /// Reason of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
}

/// Task pods running as this identity.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodsStatus {
    /// Pods in phase Running.
    #[serde(default)]
    pub running: i32,
    /// Pods in phase Pending.
    #[serde(default)]
    pub pending: i32,
    /// Pods in phase Succeeded.
    #[serde(default)]
    pub succeeded: i32,
    /// Pods in phase Failed.
    #[serde(default)]
    pub failed: i32,
    /// Pods denied at admission.
    #[serde(default)]
    pub denied: i32,
    /// The most recent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<TaskFailure>,
}

/// A failed task pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    /// Pod name.
    pub pod: String,
    /// Airflow DAG id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag_id: Option<String>,
    /// Airflow task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Container termination reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Container termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `PermissionDenied`, `LogonFailure`, `DomainTrust`, `CredentialExpired` or `Other`.
    pub category: String,
    /// When the failure was seen (RFC 3339).
    pub time: String,
}

fn default_true() -> bool {
    true
}

fn default_portable_ccg_version() -> String {
    "1".to_owned()
}

fn default_task_ids() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_run_as_user_name() -> String {
    "ContainerUser".to_owned()
}

fn default_min_validity() -> String {
    "5m".to_owned()
}

fn default_audience() -> String {
    "api://AzureADTokenExchange".to_owned()
}

fn default_expiration_seconds() -> i64 {
    3600
}

/// The API server enforces "exactly one host account kind" with a `oneOf` of `required`
/// clauses, which every supported server understands (unlike CEL).
fn exactly_one_host_account_kind(schema: &mut schemars::Schema) {
    let kinds = ["azureKeyVault", "awsSecretsManager", "kubernetesSecret", "custom"];
    let one_of: Vec<serde_json::Value> = kinds
        .iter()
        .map(|kind| serde_json::json!({ "required": [kind] }))
        .collect();
    schema.insert("oneOf".to_owned(), one_of.into());
}
