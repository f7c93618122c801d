// The projects list and the create/edit form (name, repository, default VM size, git token
// for a private repository: write-only, the page only ever shows its hint).

import { api } from './api.js';
import { h, icon, navigate } from './dom.js';
import { timeAgo } from './time.js';

export async function projectsPage() {
  const projects = await api.projects();
  projects.sort((a, b) => Date.parse(b.updatedAt) - Date.parse(a.updatedAt));
  return h('main', { class: 'page narrow-page' },
    h('div', { class: 'page-head' },
      h('h1', { text: 'Projects' }),
      h('a', { class: 'btn primary', href: '#/new', dataset: { action: 'new-project' } }, icon('plus'), 'New project')),
    projects.length
      ? h('ul', { class: 'project-list' }, projects.map((p) => h('li', {},
        h('a', { class: 'project-card', href: `#/p/${p.id}`, dataset: { projectId: p.id } },
          h('div', { class: 'project-card-name', text: p.name }),
          h('code', { class: 'project-card-repo', text: p.repositoryUrl }),
          h('div', { class: 'project-card-meta' }, h('span', { class: 'chip', text: p.defaultVmSize }), 'updated ', timeAgo(p.updatedAt))))))
      : h('div', { class: 'empty' },
        h('h2', { text: 'No projects yet' }),
        h('p', { text: 'A project is a repository agents work on. Create one to start running tasks.' }),
        h('a', { class: 'btn primary', href: '#/new' }, icon('plus'), 'Create a project')));
}

/** The create form (`project` undefined) or the edit form. */
export async function projectForm(projectId) {
  const project = projectId ? await api.project(projectId) : undefined;
  const [tokenStatus, offered] = await Promise.all([
    project ? api.gitToken(project.id) : { set: false },
    api.providers(),
  ]);
  const PROVIDER_LABELS = { local: ['Local', 'processes on the Kiln server'], hetzner: ['Hetzner Cloud', 'servers in your Hetzner project (set your token under Account)'] };
  const provider = (value) => h('label', { class: 'size-option' },
    h('input', { type: 'radio', name: 'provider', value, checked: (project?.provider || offered.default) === value }),
    h('span', {}, h('strong', { text: PROVIDER_LABELS[value]?.[0] || value }), h('small', { text: PROVIDER_LABELS[value]?.[1] || '' })));
  const gitToken = h('input', {
    class: 'input', name: 'gitToken', type: 'password', autocomplete: 'off', spellcheck: false, 'aria-label': 'Git token',
    placeholder: tokenStatus.set ? 'Leave empty to keep the current token' : 'Only for a private https:// repository',
  });
  const removeToken = h('button', {
    type: 'button', class: 'btn tiny', dataset: { action: 'remove-git-token' },
    on: {
      click: async () => {
        try {
          await api.deleteGitToken(project.id);
          tokenState.replaceChildren('Not set');
          removeToken.hidden = true;
        } catch (err) {
          error.textContent = err.message;
          error.hidden = false;
        }
      },
    },
  }, 'Remove');
  removeToken.hidden = !tokenStatus.set;
  const tokenState = h('span', { class: 'git-token-state', dataset: { set: String(tokenStatus.set) } },
    tokenStatus.set ? ['Set (', h('code', { text: tokenStatus.hint || '…' }), ') ', timeAgo(tokenStatus.setAt)] : 'Not set');
  const name = h('input', { class: 'input', name: 'name', required: true, maxLength: 200, value: project?.name || '', placeholder: 'My service' });
  const repo = h('input', { class: 'input', name: 'repositoryUrl', required: true, value: project?.repositoryUrl || '', placeholder: 'https://github.com/me/my-service.git' });
  const size = (value, label, hint) => h('label', { class: 'size-option' },
    h('input', { type: 'radio', name: 'defaultVmSize', value, checked: (project?.defaultVmSize || 'small') === value }),
    h('span', {}, h('strong', { text: label }), h('small', { text: hint })));
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const form = h('form', {
    class: 'card-form',
    on: {
      submit: async (e) => {
        e.preventDefault();
        const body = {
          name: name.value.trim(),
          repositoryUrl: repo.value.trim(),
          defaultVmSize: form.querySelector('input[name=defaultVmSize]:checked').value,
        };
        const chosen = form.querySelector('input[name=provider]:checked');
        if (chosen) body.provider = chosen.value;
        try {
          const saved = project ? await api.updateProject(project.id, body) : await api.createProject(body);
          if (gitToken.value.trim()) {
            await api.setGitToken(saved.id, gitToken.value.trim());
            gitToken.value = '';
          }
          navigate(`#/p/${saved.id}`);
        } catch (err) {
          error.textContent = err.message;
          error.hidden = false;
        }
      },
    },
  },
  h('label', { class: 'field' }, h('span', { text: 'Name' }), name),
  h('label', { class: 'field' }, h('span', { text: 'Repository' }), repo),
  h('fieldset', { class: 'field sizes' }, h('legend', { text: 'Default VM size' }),
    size('small', 'Small', '2 vCPU'), size('medium', 'Medium', '4 vCPU'), size('large', 'Large', '8+ vCPU')),
  // Only a choice when the server offers more than one (a project keeps a provider the
  // server no longer offers until it is changed here).
  offered.providers.length > 1 || (project && !offered.providers.includes(project.provider))
    ? h('fieldset', { class: 'field sizes providers' }, h('legend', { text: 'Nodes run on' }),
      ...[...new Set([...offered.providers, ...(project ? [project.provider] : [])])].map(provider))
    : null,
  h('div', { class: 'field' },
    h('span', {}, 'Git token ', h('small', { class: 'git-token-status' }, tokenState, ' ', removeToken)),
    gitToken,
    h('small', { class: 'field-hint', text: 'Used by nodes to clone and push a private repository; stored encrypted, never shown again.' })),
  error,
  h('div', { class: 'form-actions' },
    h('a', { class: 'btn ghost', href: project ? `#/p/${project.id}` : '#/', text: 'Cancel' }),
    h('button', { class: 'btn primary', type: 'submit', text: project ? 'Save' : 'Create project' })));
  setTimeout(() => name.focus());
  return h('main', { class: 'page narrow-page' },
    h('div', { class: 'page-head' }, h('h1', { text: project ? `Edit ${project.name}` : 'New project' })),
    form);
}
