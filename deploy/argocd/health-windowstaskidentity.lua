-- Argo CD health check for winflow.io/v1alpha1 WindowsTaskIdentity.
-- Install as the argocd-cm key
-- resource.customizations.health.winflow.io_WindowsTaskIdentity (see docs/argocd.md;
-- deploy/argocd/argocd-cm-patch.yaml holds exactly this text). Argo CD runs it with Lua 5.1,
-- the live object in the global `obj`; it uses the base library only.
--
-- Rules, the first that applies decides:
-- 1. Progressing while winflow has not reconciled the current generation: no status yet (a
--    new object), status.observedGeneration or Ready's observedGeneration below
--    metadata.generation (an edit not looked at yet), or no Ready condition.
-- 2. Ready=True: Healthy, with Ready's message. TasksHealthy is not part of Ready: when it is
--    False (task pods failed to authenticate recently) the identity stays Healthy and the
--    message names the failure; a token refresh in Backoff (the current token is still
--    valid) is mentioned the same way. Enforced is not part of Ready either: it says whether
--    the namespace is labelled winflow.io/enforce=true, a choice of the cluster's operators,
--    so Enforced=False leaves the health as it is.
-- 3. Ready=False with a reason that clears by itself once something else is in place, with no
--    change to the identity: Progressing, "<reason>: <message>".
--      ShareNotReady          a WindowsShare in spec.shares does not exist or is not Ready
--                             yet (the share's own health tells why);
--      ServiceAccountMissing  serviceAccount.create is false and the account, made by
--                             someone else, is not there yet;
--      Backoff                no token request was made yet.
-- 4. Ready=False with any other reason: Degraded, "<reason>: <message>". The configuration
--    or the outside world needs a person: InvalidSpec, Conflict, ApiError, and every token
--    failure that leaves no valid token (Expired, DiscoveryFailed, InvalidClient,
--    InvalidScope, InvalidIssuer, SecretMissing, ProviderUnavailable, CertificateNotTrusted,
--    TokenRequestFailed, AssertionFailed, LifetimeTooShort): pods are refused while it lasts,
--    even if winflow keeps retrying. Reasons this script does not know are Degraded too.
-- 5. Ready=Unknown: Progressing.

local waiting_reasons = {
  ShareNotReady = true,
  ServiceAccountMissing = true,
  Backoff = true,
}

local function find_condition(status, condition_type)
  if type(status) ~= "table" or type(status.conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local function explain(condition)
  local reason = text(condition.reason)
  local message = text(condition.message)
  if reason == "" then
    return message
  end
  if message == "" then
    return reason
  end
  return reason .. ": " .. message
end

local function behind(observed, generation)
  return type(generation) == "number" and (type(observed) ~= "number" or observed < generation)
end

local function health(object)
  local generation = nil
  if type(object.metadata) == "table" then
    generation = object.metadata.generation
  end
  local status = object.status
  local wanted = "waiting for winflow to reconcile generation " .. text(generation)
  if type(generation) ~= "number" then
    wanted = "waiting for winflow to reconcile the object"
  end
  if type(status) ~= "table" then
    return "Progressing", wanted
  end
  if behind(status.observedGeneration, generation) then
    if type(status.observedGeneration) == "number" then
      wanted = wanted .. " (the status describes generation " .. text(status.observedGeneration) .. ")"
    end
    return "Progressing", wanted
  end
  local ready = find_condition(status, "Ready")
  if ready == nil then
    return "Progressing", wanted
  end
  if ready.observedGeneration ~= nil and behind(ready.observedGeneration, generation) then
    return "Progressing", wanted .. " (Ready describes generation " .. text(ready.observedGeneration) .. ")"
  end

  if ready.status == "True" then
    local message = text(ready.message)
    local tasks = find_condition(status, "TasksHealthy")
    if tasks ~= nil and tasks.status == "False" then
      message = message .. "; warning: TasksHealthy=False, " .. explain(tasks)
    end
    local token = find_condition(status, "TokenReady")
    if token ~= nil and token.status == "True" and token.reason == "Backoff" then
      message = message .. "; warning: TokenReady " .. explain(token)
    end
    return "Healthy", message
  end
  if ready.status == "False" then
    if waiting_reasons[text(ready.reason)] then
      return "Progressing", explain(ready)
    end
    return "Degraded", explain(ready)
  end
  local why = explain(ready)
  if why == "" then
    why = "Ready is " .. text(ready.status)
  end
  return "Progressing", why
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
