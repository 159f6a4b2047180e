"""Every staff route: no key → 401, a weaker role → 403, another tenant's key → 404; bad input names the field."""

import asyncio

from .conftest import OPD, staff_api

# (method, path, minimum role, body): {ticket} is a clinic-a ticket, OPD a clinic-a department.
ROUTES = [
    ("GET", "/v1/departments", "viewer", None),
    ("POST", "/v1/departments", "admin", {**OPD, "code": "NEW"}),
    ("GET", "/v1/departments/OPD", "viewer", None),
    ("PATCH", "/v1/departments/OPD", "admin", {"name": "Outpatients 2"}),
    ("GET", "/v1/departments/OPD/schedule", "viewer", None),
    ("PUT", "/v1/departments/OPD/schedule", "admin", {"hours": [{"weekday": "mon", "opens_at": "08:00",
                                                                   "closes_at": "12:00"}]}),
    ("POST", "/v1/departments/OPD/overrides", "staff", {"is_open": False, "ends_at": "2099-01-01T00:00:00Z",
                                                         "reason": "strike"}),
    ("POST", "/v1/departments/OPD/open", "staff", {}),
    ("POST", "/v1/departments/OPD/close", "staff", {}),
    ("GET", "/v1/departments/OPD/status", "viewer", None),
    ("GET", "/v1/departments/OPD/tickets", "viewer", None),
    ("POST", "/v1/departments/OPD/tickets", "staff", {"phone": "+212600000001"}),
    ("POST", "/v1/departments/OPD/call-next", "staff", {}),
    ("GET", "/v1/tickets/{ticket}", "viewer", None),
    ("POST", "/v1/tickets/{ticket}/recall", "staff", {}),
    ("POST", "/v1/tickets/{ticket}/served", "staff", {}),
    ("POST", "/v1/tickets/{ticket}/no-show", "staff", {}),
    ("POST", "/v1/tickets/{ticket}/cancel", "staff", {}),
    ("POST", "/v1/tickets/{ticket}/transfer", "staff", {"department": "OPD"}),
    ("DELETE", "/v1/departments/OPD/overrides/{override}", "staff", None),
    ("DELETE", "/v1/departments/OPD", "admin", None),
]
WEAKER = {"viewer": [], "staff": ["viewer"], "admin": ["viewer", "staff"]}


async def test_every_route_checks_the_key_the_role_and_the_tenant(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", OPD)
        await admin.call("POST", "/v1/departments/OPD/open")
        _, ticket = await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212600000009"})
        _, override = await admin.call("POST", "/v1/departments/OPD/overrides",
                                       {"is_open": True, "ends_at": "2099-01-01T00:00:00Z", "reason": "x"})
        ids = {"ticket": ticket["id"], "override": override["id"]}
        for method, template, role, body in ROUTES:
            path = template.format(**ids)
            status, answer = await admin.as_(None).call(method, path, body)
            assert status == 401 and answer["error"] == "unauthorized", (method, path)
            status, _ = await admin.as_("wbk_nope_nope").call(method, path, body)
            assert status == 401, (method, path)
            for weaker in WEAKER[role]:
                status, answer = await admin.as_(keys["clinic-a"][weaker]).call(method, path, body)
                assert status == 403 and role in answer["reason"], (method, path, weaker)
            if path in ("/v1/departments",):
                continue  # a collection: every tenant has its own
            status, answer = await admin.as_(keys["clinic-b"]["admin"]).call(method, path, body)
            assert status == 404, (method, path, status, answer)
        # clinic-b sees none of clinic-a's departments, statuses or audit.
        other = admin.as_(keys["clinic-b"]["admin"])
        assert (await other.call("GET", "/v1/departments"))[1]["items"] == []
        assert (await other.call("GET", "/v1/status"))[1]["items"] == []
        assert (await other.call("GET", "/v1/audit"))[1]["items"] == []


INVALID = [
    ("POST", "/v1/departments", {**OPD, "timezone": "Mars/Olympus"}, "timezone"),
    ("POST", "/v1/departments", {**OPD, "code": "no spaces"}, "code"),
    ("POST", "/v1/departments", {**OPD, "phone_region": "XX"}, "phone_region"),
    ("POST", "/v1/departments", {k: v for k, v in OPD.items() if k != "name"}, "name"),
    ("POST", "/v1/departments", {**OPD, "colour": "blue"}, "colour"),
    ("POST", "/v1/departments", {**OPD, "almost_position": 0}, "almost_position"),
    ("PUT", "/v1/departments/OPD/schedule", {"hours": [{"weekday": 8, "opens_at": "08:00", "closes_at": "09:00"}]},
     "hours.0.weekday"),
    ("PUT", "/v1/departments/OPD/schedule", {"hours": [{"weekday": 1, "opens_at": "18:00", "closes_at": "08:00"}]},
     "hours.0"),
    ("PUT", "/v1/departments/OPD/schedule", {"hours": [{"weekday": 1, "opens_at": "08:00+01:00",
                                                        "closes_at": "12:00"}]}, "hours.0.opens_at"),
    ("PUT", "/v1/departments/OPD/schedule", {"hours": [{"weekday": 1, "opens_at": "8 o'clock",
                                                        "closes_at": "12:00"}]}, "hours.0.opens_at"),
    ("POST", "/v1/departments/OPD/overrides", {"is_open": True, "ends_at": "2099-01-01T00:00:00", "reason": "x"},
     "ends_at"),
    ("POST", "/v1/departments/OPD/overrides", {"is_open": True, "ends_at": "2001-01-01T00:00:00Z", "reason": "x"},
     "ends_at"),
    ("POST", "/v1/departments/OPD/overrides", {"is_open": True, "ends_at": "2099-01-01T00:00:00Z"}, "reason"),
    ("POST", "/v1/departments/OPD/open", {"closes_at": "2001-01-01T00:00:00Z"}, "closes_at"),
    ("POST", "/v1/departments/OPD/tickets", {"phone": "+2126"}, "phone"),
    ("POST", "/v1/departments/OPD/tickets", {"phone": "0693955230", "language": "xx"}, "language"),
    ("POST", "/v1/departments/OPD/tickets", {}, "phone"),
    ("GET", "/v1/audit?since=yesterday", None, "since"),
    ("GET", "/v1/departments/OPD/tickets?state=lost", None, "state"),
]


async def test_invalid_input_is_a_4xx_naming_the_field_and_changes_nothing(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", OPD)
        for method, path, body, field in INVALID:
            status, answer = await admin.call(method, path, body)
            assert status == 422, (path, body, answer)
            assert answer["field"] == field and answer["reason"], (path, body, answer)
        async with admin.http.post(admin.url + "/v1/departments", data=b"{oops",
                                   headers={"Authorization": f"Bearer {admin.key}"}) as r:
            assert r.status == 400
        async with admin.http.post(admin.url + "/v1/departments", data='{"name": "Clinique fermée"}'.encode("latin-1"),
                                   headers={"Authorization": f"Bearer {admin.key}",
                                            "Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "body is not UTF-8"
        _, status = await admin.call("GET", "/v1/departments/OPD/status")
        _, schedule = await admin.call("GET", "/v1/departments/OPD/schedule")
        _, tickets = await admin.call("GET", "/v1/departments/OPD/tickets")
        assert not status["is_open"] and schedule["hours"] == [] and schedule["overrides"] == []
        assert tickets["items"] == []


async def test_one_department_created_at_once_from_several_requests_is_one_201_and_409s(isolated):
    async with staff_api(isolated) as (admin, _, _):
        created = await asyncio.gather(*(admin.call("POST", "/v1/departments", OPD) for _ in range(4)))
        assert sorted(status for status, _ in created) == [201, 409, 409, 409], created
