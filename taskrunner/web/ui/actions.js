// The actions' forms: one form per action the caller may use (GET /actions), built from
// its parameters' JSON Schema — a select for an enum, a checkbox for a boolean, a number
// for an integer, a list (one item a line) for an array, a text field otherwise. Start
// posts the values to /actions/<name>/jobs and opens the job's view, as the start form
// does. The instance checks every value again (400 invalid_param names the parameter and
// the rule, shown under the form). No actions, or no actions scope: the section stays hidden.
"use strict";

const actionForms = {
  loaded: false,

  // Ask once per page load (and after a token is given): the set changes only on SIGHUP.
  async show() {
    if (this.loaded) return;
    let actions;
    try {
      actions = (await (await api("GET", "/actions")).json()).actions;
    } catch (err) {
      if (failed(err)) return;
      show($("actions"), false);  // no actions scope (403), or an older instance (404)
      return;
    }
    this.loaded = true;
    const holder = $("action-forms");
    holder.replaceChildren(...actions.map((action) => this.form(action)));
    show($("actions"), actions.length > 0);
  },

  form(action) {
    const form = document.createElement("form");
    form.className = "start action";
    form.dataset.action = action.name;
    const title = document.createElement("h3");
    title.textContent = action.name;
    form.append(title);
    if (action.description) {
      const about = document.createElement("p");
      about.className = "muted";
      about.textContent = action.description;
      form.append(about);
    }
    const params = action.params || {};
    const required = new Set(params.required || []);
    const fields = [];
    for (const [name, schema] of Object.entries(params.properties || {})) {
      const field = this.field(action.name, name, schema, required.has(name));
      fields.push(field);
      form.append(field.element);
    }
    const buttons = document.createElement("div");
    buttons.className = "actions";
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Start";
    const status = document.createElement("span");
    status.setAttribute("role", "status");
    buttons.append(button, status);
    const error = document.createElement("div");
    error.className = "error";
    error.setAttribute("role", "alert");
    error.hidden = true;
    form.append(buttons, error);
    form.addEventListener("submit", (event) => this.submit(event, action.name, fields, error));
    return form;
  },

  // One parameter's control, its label and help; value() reads it as the schema types it
  // (undefined: left out, so the action's default holds).
  field(action, name, schema, required) {
    const id = `action-${action}-${name}`;
    const element = document.createElement("div");
    element.className = "field";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = required ? name : `${name} (optional)`;
    let control;
    let value;
    const item = schema.type === "array" ? (schema.items || {}) : schema;
    if (schema.type === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
      control.checked = schema.default === true;
      value = () => control.checked;
    } else if (item.enum && schema.type !== "array") {
      control = document.createElement("select");
      if (!required) control.append(new Option("(default)", ""));
      for (const choice of item.enum) control.append(new Option(choice, choice));
      if (schema.default !== undefined) control.value = schema.default;
      value = () => (control.value === "" && !required ? undefined : control.value);
    } else if (schema.type === "array") {
      control = document.createElement("textarea");
      control.rows = 2;
      control.spellcheck = false;
      value = () => {
        const items = control.value.split(/\r?\n/).filter((line) => line !== "");
        return items.length || required ? items : undefined;
      };
    } else if (schema.type === "integer") {
      control = document.createElement("input");
      control.type = "number";
      control.step = "1";
      if (schema.minimum !== undefined) control.min = String(schema.minimum);
      if (schema.maximum !== undefined) control.max = String(schema.maximum);
      if (schema.default !== undefined) control.placeholder = String(schema.default);
      value = () => (control.value === "" ? undefined : Number(control.value));
    } else {
      control = document.createElement("input");
      control.type = "text";
      control.spellcheck = false;
      control.autocomplete = "off";
      if (schema.maxLength !== undefined) control.maxLength = schema.maxLength;
      if (schema.default !== undefined) control.placeholder = String(schema.default);
      value = () => (control.value === "" && !required ? undefined : control.value);
    }
    control.id = id;
    control.name = name;
    if (required && schema.type !== "boolean" && schema.type !== "array") control.required = true;
    element.append(label, control);
    const help = [schema.description, schema.type === "array" ? "one item a line" : ""]
      .filter(Boolean).join("; ");
    if (help) {
      const small = document.createElement("small");
      small.className = "muted";
      small.id = `${id}-help`;
      small.textContent = help;
      control.setAttribute("aria-describedby", small.id);
      element.append(small);
    }
    return {name, element, value};
  },

  async submit(event, name, fields, error) {
    event.preventDefault();
    clearError(error);
    const params = {};
    for (const field of fields) {
      const v = field.value();
      if (v !== undefined) params[field.name] = v;
    }
    const button = event.submitter || event.target.querySelector("button");
    button.disabled = true;
    try {
      const path = `/actions/${encodeURIComponent(name)}/jobs`;
      const job = await (await api("POST", path, {params})).json();
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (!failed(err)) showError(error, err);
    } finally {
      button.disabled = false;
    }
  },
};
