-- Runs an Argo CD health script the way Argo CD does, for tests/argocd.rs:
--
--   lua5.1 tests/argocd/run-health.lua <health script> <object.json>
--
-- Reads the object (JSON, as `kubectl get -o json` prints it), sets it as the global `obj`,
-- runs the script and prints its result as one JSON line {"status": ..., "message": ...}.
-- JSON null becomes nil, as in Argo CD. Needs Debian's lua5.1 and lua-cjson.
local cjson = require "cjson"

local script, object_file = arg[1], arg[2]
if script == nil or object_file == nil then
  io.stderr:write("usage: lua5.1 run-health.lua <health script> <object.json>\n")
  os.exit(2)
end

local function without_nulls(value)
  if value == cjson.null then
    return nil
  end
  if type(value) == "table" then
    local copy = {}
    for key, item in pairs(value) do
      copy[key] = without_nulls(item)
    end
    return copy
  end
  return value
end

local file = assert(io.open(object_file, "r"))
local document = file:read("*a")
file:close()
obj = without_nulls(cjson.decode(document))

local hs = dofile(script)
if type(hs) ~= "table" then
  io.stderr:write(script .. " returned " .. type(hs) .. ", not a table\n")
  os.exit(1)
end
local valid = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
if not valid[hs.status] then
  io.stderr:write(script .. " returned status " .. tostring(hs.status) .. ", not an Argo CD health status\n")
  os.exit(1)
end
print(cjson.encode({ status = hs.status, message = hs.message or "" }))
