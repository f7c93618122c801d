#!/usr/bin/env python3
"""Writes src/openapi.json, the OpenAPI 3 document of every kiln-server endpoint.

Run it after changing a route or a body; tests/openapi.rs checks the document against the
router's routes and for dangling references.
"""
import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def arr(s): return {"type":"array","items":s}
uuid={"type":"string","format":"uuid"}
ts={"type":"string","format":"date-time"}
def nullable(s): d=dict(s); d["nullable"]=True; return d
def strenum(vals): return {"type":"string","enum":vals}
S={}
S["Error"]={"type":"object","required":["error","message"],"properties":{"error":{"type":"string"},"message":{"type":"string"},"rejected":arr(uuid)}}
S["VmSize"]=strenum(["small","medium","large"])
S["Role"]=strenum(["user","assistant","system","tool"])
S["TaskStatus"]=strenum(["draft","ready","queued","delegated","in_progress","completed","failed","cancelled"])
S["SessionStatus"]=strenum(["pending","active","completed","stopped","closed"])
S["NodeState"]=strenum(["provisioning","active","warm","destroying","destroyed","failed"])
S["WorkspaceStatus"]=strenum(["creating","running","stopped","destroying","destroyed"])
S["User"]={"type":"object","required":["id","name","createdAt"],"properties":{"id":uuid,"name":{"type":"string"},"createdAt":ts}}
S["Project"]={"type":"object","required":["id","owner","name","repositoryUrl","defaultVmSize","createdAt","updatedAt"],"properties":{"id":uuid,"owner":uuid,"name":{"type":"string"},"repositoryUrl":{"type":"string"},"defaultVmSize":ref("VmSize"),"createdAt":ts,"updatedAt":ts}}
S["CreateProject"]={"type":"object","additionalProperties":False,"required":["name","repositoryUrl"],"properties":{"name":{"type":"string","minLength":1,"maxLength":200},"repositoryUrl":{"type":"string","minLength":1,"maxLength":4096},"defaultVmSize":ref("VmSize")}}
S["UpdateProject"]={"type":"object","additionalProperties":False,"properties":{"name":{"type":"string","minLength":1,"maxLength":200},"repositoryUrl":{"type":"string","minLength":1,"maxLength":4096},"defaultVmSize":ref("VmSize")}}
optstr=nullable({"type":"string"})
S["Task"]={"type":"object","required":["id","projectId","owner","title","description","priority","status","statusChangedAt","attempt","createdAt","updatedAt"],"properties":{"id":uuid,"projectId":uuid,"owner":uuid,"title":{"type":"string"},"description":{"type":"string"},"priority":{"type":"integer","format":"int32"},"status":ref("TaskStatus"),"statusChangedAt":ts,"outputBranch":optstr,"prUrl":optstr,"summary":optstr,"errorMessage":optstr,"sessionId":nullable(uuid),"workspaceId":nullable(uuid),"nodeId":nullable(uuid),"vmSizeOverride":{"allOf":[ref("VmSize")],"nullable":True},"agentHint":optstr,"attempt":{"type":"integer","minimum":0},"createdAt":ts,"updatedAt":ts}}
S["CreateTask"]={"type":"object","additionalProperties":False,"required":["description"],"properties":{"title":{"type":"string","minLength":1},"description":{"type":"string","minLength":1,"maxLength":204800},"priority":{"type":"integer","format":"int32"},"vmSize":ref("VmSize"),"agentHint":{"type":"string"},"runNow":{"type":"boolean","default":False}}}
S["UpdateTask"]={"type":"object","additionalProperties":False,"properties":{"title":{"type":"string","minLength":1},"description":{"type":"string","minLength":1,"maxLength":204800},"priority":{"type":"integer","format":"int32"},"vmSize":{"allOf":[ref("VmSize")],"nullable":True},"agentHint":optstr,"status":{"type":"string","enum":["ready"],"description":"Marks a draft ready."}}}
S["ChatSession"]={"type":"object","required":["id","projectId","owner","status","messageCount","createdAt","updatedAt"],"properties":{"id":uuid,"projectId":uuid,"owner":uuid,"taskId":nullable(uuid),"workspaceId":nullable(uuid),"topic":optstr,"status":ref("SessionStatus"),"messageCount":{"type":"integer","format":"int64"},"createdAt":ts,"updatedAt":ts}}
S["ToolMeta"]={"type":"object","required":["tool"],"properties":{"tool":{"type":"string"},"target":optstr,"status":optstr}}
S["ChatMessage"]={"type":"object","required":["id","sessionId","role","content","createdAt"],"properties":{"id":uuid,"sessionId":uuid,"role":ref("Role"),"content":{"type":"string","minLength":1},"tool":ref("ToolMeta"),"seq":{"type":"integer","format":"int64"},"createdAt":ts}}
S["StoredMessage"]={"allOf":[ref("ChatMessage"),{"type":"object","required":["cursor"],"properties":{"cursor":{"type":"integer","format":"int64","minimum":1}}}]}
S["MessagesPage"]={"type":"object","required":["messages","hasMore"],"properties":{"messages":arr(ref("StoredMessage")),"hasMore":{"type":"boolean"}}}
S["FollowUp"]={"type":"object","additionalProperties":False,"required":["text"],"properties":{"text":{"type":"string","minLength":1}}}
S["Node"]={"type":"object","required":["id","owner","size","provider","state","autoProvisioned","createdAt","updatedAt"],"properties":{"id":uuid,"owner":uuid,"size":ref("VmSize"),"location":optstr,"provider":{"type":"string"},"providerId":optstr,"state":ref("NodeState"),"warmUntil":nullable(ts),"claimedBy":nullable(uuid),"autoProvisioned":{"type":"boolean"},"lastHeartbeatAt":nullable(ts),"errorMessage":optstr,"createdAt":ts,"updatedAt":ts}}
S["Workspace"]={"type":"object","required":["id","nodeId","owner","status","createdAt","updatedAt"],"properties":{"id":uuid,"nodeId":uuid,"owner":uuid,"projectId":nullable(uuid),"taskId":nullable(uuid),"sessionId":nullable(uuid),"branch":optstr,"status":ref("WorkspaceStatus"),"createdAt":ts,"updatedAt":ts}}
S["CreateToken"]={"type":"object","additionalProperties":False,"required":["name"],"properties":{"name":{"type":"string","minLength":1},"expiresInSecs":{"type":"integer","minimum":0}}}
S["NewToken"]={"type":"object","required":["id","name","token"],"properties":{"id":uuid,"name":{"type":"string"},"token":{"type":"string"},"expiresAt":nullable(ts)}}
S["Empty"]={"type":"object"}
S["WorkspaceReport"]={"type":"object","required":["workspaceId","agentRunning"],"properties":{"workspaceId":uuid,"agentRunning":{"type":"boolean"}}}
S["OutboxReport"]={"type":"object","properties":{"pending":{"type":"integer","minimum":0},"oldestPendingMs":{"type":"integer","minimum":0},"delivered":{"type":"integer","minimum":0},"dropped":{"type":"integer","minimum":0},"lastError":optstr}}
S["NodeHello"]={"type":"object","required":["nodeId","version","workspaces"],"properties":{"nodeId":uuid,"version":{"type":"string"},"workspaces":arr(ref("WorkspaceReport"))}}
S["Heartbeat"]={"type":"object","required":["nodeId","outbox","workspaces"],"properties":{"nodeId":uuid,"outbox":ref("OutboxReport"),"workspaces":arr(ref("WorkspaceReport"))}}
S["Prompt"]={"type":"object","required":["messageId","text"],"properties":{"messageId":uuid,"text":{"type":"string"}}}
def tagged(name, req, props):
    p={"type":{"type":"string","enum":[name]}}; p.update(props)
    return {"type":"object","required":["type"]+req,"properties":p}
S["NodeCommand"]={"oneOf":[
 tagged("create_workspace",["workspace_id","repository_url","callback_token"],{"workspace_id":uuid,"project_id":nullable(uuid),"session_id":nullable(uuid),"task_id":nullable(uuid),"repository_url":{"type":"string"},"branch":optstr,"prompt":{"allOf":[ref("Prompt")],"nullable":True},"callback_token":{"type":"string"},"agent_hint":optstr}),
 tagged("prompt",["workspace_id","prompt"],{"workspace_id":uuid,"prompt":ref("Prompt")}),
 tagged("cancel",["workspace_id"],{"workspace_id":uuid}),
 tagged("destroy_workspace",["workspace_id"],{"workspace_id":uuid}),
 tagged("shutdown",["reason"],{"reason":{"type":"string"}})],"discriminator":{"propertyName":"type"}}
S["SequencedCommand"]={"type":"object","required":["seq","command"],"properties":{"seq":{"type":"integer","minimum":1},"command":ref("NodeCommand")}}
S["CommandBatch"]={"type":"object","required":["commands"],"properties":{"commands":arr(ref("SequencedCommand"))}}
S["WorkspaceEvent"]={"oneOf":[
 tagged("agent_started",["workspace_id"],{"workspace_id":uuid,"branch":optstr}),
 tagged("completed",["workspace_id"],{"workspace_id":uuid,"branch":optstr,"pr_url":optstr,"summary":optstr,"warning":optstr}),
 tagged("failed",["workspace_id","error"],{"workspace_id":uuid,"error":{"type":"string"}}),
 tagged("cancelled",["workspace_id"],{"workspace_id":uuid}),
 tagged("destroyed",["workspace_id"],{"workspace_id":uuid})],"discriminator":{"propertyName":"type"}}
S["MessageDelta"]={"type":"object","required":["workspaceId","sessionId","segmentId","text"],"properties":{"workspaceId":uuid,"sessionId":uuid,"segmentId":uuid,"text":{"type":"string"}}}
S["DeltaBatch"]={"type":"object","required":["deltas"],"properties":{"deltas":arr(ref("MessageDelta"))}}
S["MessageBatch"]={"type":"object","required":["messages"],"properties":{"messages":{"type":"array","minItems":1,"maxItems":100,"items":ref("ChatMessage")}}}
S["Persisted"]={"type":"object","required":["persisted","duplicates"],"properties":{"persisted":{"type":"integer","minimum":0},"duplicates":{"type":"integer","minimum":0}}}

def err(desc): return {"description":desc,"content":{"application/json":{"schema":ref("Error")}}}
def ok(schema, code="200", desc="OK"):
    return {code:{"description":desc,"content":{"application/json":{"schema":schema}}}}
def body(schema): return {"required":True,"content":{"application/json":{"schema":schema}}}
def pid(name): return {"name":name,"in":"path","required":True,"schema":uuid}
def q(name, schema, desc=""): 
    d={"name":name,"in":"query","required":False,"schema":schema}
    if desc: d["description"]=desc
    return d
USER=[{"bearerAuth":[]},{"cookieAuth":[]}]
NODE=[{"callbackToken":[]}]
def op(summary, opid, responses, sec=USER, params=None, req=None, errs=(400,401,404)):
    o={"summary":summary,"operationId":opid,"responses":dict(responses)}
    if sec is not None: o["security"]=sec
    if params: o["parameters"]=params
    if req: o["requestBody"]=req
    for e in errs:
        o["responses"][str(e)]=err({400:"Invalid request",401:"Not signed in or invalid token",403:"Token for another node or workspace",404:"Not found (or not yours)",409:"Conflict with the current state",410:"The node was stopped (node_stopped)",413:"Body too large",415:"Not JSON",422:"Invalid body",426:"Not a WebSocket upgrade"}[e])
    o["responses"]["500"]=err("Internal error")
    return o
P={}
P["/login"]={"get":op("Trade a one-time login token for a session cookie","login",{"303":{"description":"Session cookie set; redirect to /"}},sec=[],params=[{"name":"token","in":"query","required":True,"schema":{"type":"string"}}],errs=(400,401))}
P["/api/logout"]={"post":op("End the browser session","logout",{"204":{"description":"Signed out"}},sec=[],errs=())}
P["/api/health"]={"get":op("Liveness","health",ok({"type":"object","properties":{"status":{"type":"string"}}}),sec=[],errs=())}
P["/api/openapi.json"]={"get":op("This document","openapi",ok({"type":"object"}),sec=[],errs=())}
P["/api/me"]={"get":op("The signed-in user","me",ok(ref("User")),errs=(401,))}
P["/api/tokens"]={"post":op("Create an API token (secret shown once)","createToken",ok(ref("NewToken"),"201","Created"),req=body(ref("CreateToken")),errs=(400,401,415,422))}
P["/api/projects"]={"get":op("List projects","listProjects",ok(arr(ref("Project"))),errs=(401,)),
 "post":op("Create a project","createProject",ok(ref("Project"),"201","Created"),req=body(ref("CreateProject")),errs=(400,401,415,422))}
pp=[pid("projectId")]
P["/api/projects/{projectId}"]={"get":op("Get a project","getProject",ok(ref("Project")),params=pp,errs=(401,404)),
 "patch":op("Update a project (incl. defaultVmSize)","updateProject",ok(ref("Project")),params=pp,req=body(ref("UpdateProject")),errs=(400,401,404,415,422)),
 "delete":op("Delete a project with its tasks and sessions","deleteProject",{"204":{"description":"Deleted"}},params=pp,errs=(401,404,409))}
P["/api/projects/{projectId}/tasks"]={"get":op("List tasks (priority, then oldest first)","listTasks",ok(arr(ref("Task"))),params=pp+[q("status",{"type":"string"},"Comma-separated task statuses")],errs=(400,401,404)),
 "post":op("Create a task (draft, or queued with runNow); creates its chat session and first message","createTask",ok(ref("Task"),"201","Created"),params=pp,req=body(ref("CreateTask")),errs=(400,401,404,415,422))}
P["/api/projects/{projectId}/sessions"]={"get":op("List chat sessions, newest first","listSessions",ok(arr(ref("ChatSession"))),params=pp+[q("taskId",uuid),q("limit",{"type":"integer","minimum":0})],errs=(400,401,404))}
P["/api/projects/{projectId}/ws"]={"get":op("WebSocket of live updates: frames {type, data} with message.new, message.delta, session.updated, task.updated, node.updated, workspace.updated","projectWebSocket",{"101":{"description":"Switching protocols"}},params=pp,errs=(401,404,426))}
tp=[pid("taskId")]
P["/api/tasks/{taskId}"]={"get":op("Get a task","getTask",ok(ref("Task")),params=tp,errs=(401,404)),
 "patch":op("Update a draft or ready task","updateTask",ok(ref("Task")),params=tp,req=body(ref("UpdateTask")),errs=(400,401,404,409,415,422)),
 "delete":op("Delete a task that is not running","deleteTask",{"204":{"description":"Deleted"}},params=tp,errs=(401,404,409))}
for verb,s in [("run","Run a draft or ready task"),("cancel","Cancel a task (the workspace is kept)"),("rerun","Run a failed or cancelled task again")]:
    P[f"/api/tasks/{{taskId}}/{verb}"]={"post":op(s,verb+"Task",ok(ref("Task")),params=tp,errs=(401,404,409))}
sp=[pid("sessionId")]
P["/api/sessions/{sessionId}"]={"get":op("Get a chat session","getSession",ok(ref("ChatSession")),params=sp,errs=(401,404))}
P["/api/sessions/{sessionId}/messages"]={"get":op("A page of messages, oldest first (latest page, before or after a cursor)","listMessages",ok(ref("MessagesPage")),params=sp+[q("before",{"type":"integer","format":"int64"}),q("after",{"type":"integer","format":"int64"}),q("limit",{"type":"integer","minimum":1,"maximum":500,"default":100})],errs=(400,401,404))}
P["/api/sessions/{sessionId}/prompt"]={"post":op("Send a follow-up prompt to the session's running agent","promptSession",ok(ref("ChatMessage"),"202","Queued for the agent"),params=sp,req=body(ref("FollowUp")),errs=(400,401,404,409,415,422))}
P["/api/nodes"]={"get":op("List nodes with state and warmUntil","listNodes",ok(arr(ref("Node"))),params=[q("state",{"type":"string"},"Comma-separated node states")],errs=(400,401))}
np=[pid("nodeId")]
P["/api/nodes/{nodeId}"]={"get":op("Get a node","getNode",ok(ref("Node")),params=np,errs=(401,404))}
P["/api/nodes/{nodeId}/hello"]={"post":op("Node: the agent host is ready","nodeHello",ok(ref("Empty")),sec=NODE,params=np,req=body(ref("NodeHello")),errs=(400,401,403,404,410,415,422))}
P["/api/nodes/{nodeId}/heartbeat"]={"post":op("Node: heartbeat","nodeHeartbeat",ok(ref("Empty")),sec=NODE,params=np,req=body(ref("Heartbeat")),errs=(400,401,403,404,410,415,422))}
P["/api/nodes/{nodeId}/commands"]={"get":op("Node: long poll for commands after a sequence number","nodeCommands",ok(ref("CommandBatch")),sec=NODE,params=np+[q("after",{"type":"integer","minimum":0,"default":0}),q("waitMs",{"type":"integer","minimum":0,"maximum":60000,"default":25000})],errs=(400,401,403,404,410))}
P["/api/nodes/{nodeId}/events"]={"post":op("Node: a workspace event (idempotent)","nodeEvents",ok(ref("Empty")),sec=NODE,params=np,req=body(ref("WorkspaceEvent")),errs=(400,401,403,404,409,410,415,422))}
P["/api/nodes/{nodeId}/deltas"]={"post":op("Node: live text deltas (ephemeral)","nodeDeltas",ok(ref("Empty"),"202","Accepted"),sec=NODE,params=np,req=body(ref("DeltaBatch")),errs=(400,401,403,404,410,415,422))}
P["/api/workspaces"]={"get":op("List workspaces","listWorkspaces",ok(arr(ref("Workspace"))),params=[q("taskId",uuid),q("nodeId",uuid),q("status",{"type":"string"},"Comma-separated workspace statuses")],errs=(400,401))}
wp=[pid("workspaceId")]
P["/api/workspaces/{workspaceId}"]={"get":op("Get a workspace","getWorkspace",ok(ref("Workspace")),params=wp,errs=(401,404))}
P["/api/workspaces/{workspaceId}/messages"]={"post":op("Node outbox: deliver 1-100 chat messages (idempotent by id)","postMessages",ok(ref("Persisted")),sec=[{"callbackToken":[]}],params=wp,req=body(ref("MessageBatch")),errs=(400,401,403,404,413,415,422))}
P["/assets/{path}"]={"get":{"summary":"A static file of the web UI","operationId":"uiAsset","parameters":[{"name":"path","in":"path","required":True,"schema":{"type":"string"}}],"responses":{"200":{"description":"The file"},"304":{"description":"Not modified (ETag)"},"404":err("No such file")}}}
P["/"]={"get":{"summary":"The web UI","operationId":"ui","responses":{"200":{"description":"HTML","content":{"text/html":{"schema":{"type":"string"}}}}}}}
doc={"openapi":"3.0.3","info":{"title":"Kiln control plane","version":"0.1.0","description":"Errors are JSON {\"error\": code, \"message\": ...}; another user's objects answer 404."},
 "servers":[{"url":"/"}],"paths":P,
 "components":{"schemas":S,"securitySchemes":{"bearerAuth":{"type":"http","scheme":"bearer","description":"API token (kiln_...)"},"cookieAuth":{"type":"apiKey","in":"cookie","name":"kiln_session"},"callbackToken":{"type":"http","scheme":"bearer","bearerFormat":"JWT","description":"Node or workspace callback token (HS256)"}}}}
import os
out=os.path.join(os.path.dirname(os.path.abspath(__file__)),"..","src","openapi.json")
with open(out,"w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(len(P))
