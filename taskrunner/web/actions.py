"""The actions' routes: ``GET /actions``, ``POST /actions/<name>`` (like ``/run``) and
``POST /actions/<name>/jobs`` (like ``/jobs``).

An action becomes a `CommandSpec` (its template expanded with the request's checked
parameters, its ``cwd`` and ``env``, a ``timeout`` within its cap) and a `Policy`, then goes
through the launcher's one door as any command: ``/run``'s handler runs it, the registry
makes it a job. Its policy is the caller's (its share, its wrapper) with two changes: no
allowlist (the operator chose the program; ``--allow`` does not apply), and the action's
own limits over the caller's, key by key (`taskrunner.web.action_wrappers`).

An action the caller may not use is answered as one that does not exist (404
``action_not_found``): its name tells a caller nothing it may not see. Nothing starts
before every parameter is checked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taskrunner.actions.actionfile import Action
from taskrunner.errors import ActionNotFound, SpawnError, StartupError
from taskrunner.process.engine import CommandSpec
from taskrunner.process.launcher import Policy
from taskrunner.web.base import CommandHandler, JSONHandler
from taskrunner.web.run import RunHandler
from taskrunner.web.validation import ActionRequest, parse_action_request


def action_json(action: Action) -> dict[str, Any]:
    """What ``GET /actions`` says of one action."""
    return {"name": action.name, "description": action.description,
            "timeout": action.timeout, "params": action.json_schema()}


class ActionMixin(CommandHandler):
    """What both action routes share: finding the action, checking the body, the policy."""

    action: Action | None = None
    action_policy: Policy | None = None

    def find_action(self, name: str) -> Action:
        """The action ``name`` if the caller may use it; else `ActionNotFound`."""
        action = self.ctx.actions.get(name)
        if action is None or (self.caller is not None and not self.caller.may_use(name)):
            raise ActionNotFound(f"no action {name!r}")
        self.action = action
        return action

    def action_spec(self, action: Action,
                    request: ActionRequest) -> tuple[CommandSpec, dict[str, Any]]:
        """The command ``request`` asks of ``action`` and its parameters as checked; the
        policy it runs under is left in `action_policy`."""
        argv, params = action.bind(request.params)
        self.action_policy = self._policy(action)
        return self.prepared(CommandSpec(args=argv, timeout=request.timeout,
                                         stdin=request.stdin, env=action.env,
                                         cwd=action.cwd)), params

    def parse_action(self, action: Action, job: bool) -> ActionRequest:
        """The request body for ``action``, validated (not yet its parameters)."""
        config = self.ctx.config
        # The action's timeout is its cap and its default; without one, the instance's.
        default, cap = ((config.default_timeout, config.max_timeout) if action.timeout is None
                        else (action.timeout, action.timeout))
        return parse_action_request(
            bytes(self.body), default_timeout=default, max_timeout=cap,
            callback_hosts=self.ctx.jobs.callbacks.hosts if job else None)

    def _policy(self, action: Action) -> Policy:
        caller = self.caller
        base = (caller.policy if caller is not None and caller.policy is not None
                else self.ctx.launcher.policy)
        containment = base.containment
        if action.limits:
            config = caller.config if caller is not None and caller.config else self.ctx.config
            try:
                containment = self.ctx.action_wrappers.get(
                    dataclasses.replace(config, **action.limits))
            except StartupError as exc:
                raise SpawnError(f"action {action.name!r} cannot start: {exc}") from None
        # No allowlist: the operator chose the program (docs/security.md).
        return Policy(None, containment, base.share)


class ActionsHandler(JSONHandler):
    """``GET /actions``: the actions the caller may use, each with its parameters' schema."""

    scope = "actions"

    def get(self) -> None:
        caller = self.caller
        actions = [action_json(a) for a in self.ctx.actions.actions.values()
                   if caller is None or caller.may_use(a.name)]
        self.write_json({"actions": actions})


class ActionRunHandler(RunHandler, ActionMixin):
    """``POST /actions/<name>``: run the action and answer as ``/run`` does."""

    scope = "actions"

    async def post(self, name: str) -> None:  # type: ignore[override]
        await super().post()

    def parse_command(self) -> CommandSpec:
        self._may_start()
        name = self.path_args[0]
        action = self.find_action(name)
        spec, _ = self.action_spec(action, self.parse_action(action, job=False))
        return spec

    @property
    def policy(self) -> Policy | None:
        return self.action_policy

    def on_finish(self) -> None:
        if self.command is not None and self.action is not None:
            self.ctx.metrics.action_started(self.action.name)
        super().on_finish()


class ActionJobsHandler(ActionMixin):
    """``POST /actions/<name>/jobs``: the action as a job, answered as ``POST /jobs``; the
    job keeps the action's name and its parameters."""

    scope = "actions"

    async def post(self, name: str) -> None:
        if self._finished:
            return
        self._may_start()
        action = self.find_action(name)
        request = self.parse_action(action, job=True)
        spec, params = self.action_spec(action, request)
        await self.submit_job(spec, self.action_policy, request.callback_url,
                              action=action.name, params=params)
        self.ctx.metrics.action_started(action.name)
