// Relative times ("3 min ago") and countdowns, refreshed by one shared ticker.

const units = [
  ['year', 365 * 24 * 3600], ['month', 30 * 24 * 3600], ['week', 7 * 24 * 3600],
  ['day', 24 * 3600], ['hour', 3600], ['minute', 60],
];
const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' });

/** "just now", "5 min ago", "yesterday"… */
export function relative(iso, now = Date.now()) {
  const secs = (Date.parse(iso) - now) / 1000;
  if (Math.abs(secs) < 45) return 'just now';
  for (const [unit, size] of units) {
    if (Math.abs(secs) >= size) return rtf.format(Math.round(secs / size), unit);
  }
  return rtf.format(Math.round(secs / 60), 'minute');
}

/** "12:04" today, "Mar 3, 12:04" otherwise. */
export function clock(iso) {
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** "29:41" or "1:02:03" until `iso`; "0:00" once past. */
export function countdown(iso, now = Date.now()) {
  let s = Math.max(0, Math.floor((Date.parse(iso) - now) / 1000));
  const hours = Math.floor(s / 3600); s -= hours * 3600;
  const mins = Math.floor(s / 60); s -= mins * 60;
  const pad = (n) => String(n).padStart(2, '0');
  return hours ? `${hours}:${pad(mins)}:${pad(s)}` : `${mins}:${pad(s)}`;
}

/** A <time> element that keeps its relative text fresh. */
export function timeAgo(iso) {
  const el = document.createElement('time');
  el.dateTime = iso;
  el.title = new Date(iso).toLocaleString();
  el.dataset.relative = '';
  el.textContent = relative(iso);
  return el;
}

/** A <span> counting down to `iso` every second. */
export function countdownEl(iso) {
  const el = document.createElement('span');
  el.className = 'countdown';
  el.dataset.until = iso;
  el.textContent = countdown(iso);
  return el;
}

setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll('.countdown[data-until]')) el.textContent = countdown(el.dataset.until, now);
  for (const el of document.querySelectorAll('.warm-fill[data-until]')) {
    const total = Date.parse(el.dataset.until) - Date.parse(el.dataset.from);
    el.style.width = `${Math.max(0, Math.min(100, total > 0 ? (100 * (Date.parse(el.dataset.until) - now)) / total : 0))}%`;
  }
}, 1000);
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll('time[data-relative]')) el.textContent = relative(el.dateTime, now);
}, 20000);
