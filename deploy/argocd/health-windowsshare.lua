-- Argo CD health check for winflow.io/v1alpha1 WindowsShare.
-- Install as the argocd-cm key
-- resource.customizations.health.winflow.io_WindowsShare (see docs/argocd.md;
-- deploy/argocd/argocd-cm-patch.yaml holds exactly this text). Argo CD runs it with Lua 5.1,
-- the live object in the global `obj`; it uses the base library only.
--
-- Rules, the first that applies decides:
-- 1. Progressing while winflow has not reconciled the current generation: no status yet (a
--    new object), status.observedGeneration or Ready's observedGeneration below
--    metadata.generation (an edit not looked at yet), or no Ready condition.
-- 2. Ready=True (reason Bound): Healthy, with Ready's message (which notes a credentials
--    Secret without a domain).
-- 3. Ready=False, reason Pending: Progressing, "<reason>: <message>". The volume and claim
--    exist and Kubernetes binds them within seconds, with no change to the share.
-- 4. Ready=False with any other reason: Degraded, "<reason>: <message>". A person has to act:
--    InvalidSpec (a rule of the spec is broken), SecretMissing (the credentials Secret does
--    not exist or lacks username or password), Conflict (a volume or claim with the share's
--    name that winflow does not manage), ApiError (the API server refused a child). Reasons
--    this script does not know are Degraded too.
-- 5. Ready=Unknown: Progressing.

local waiting_reasons = {
  Pending = true,
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
    return "Healthy", text(ready.message)
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
