// Runs @tinfoilsh/verifier's SEV-SNP verification on reports given as JSON on stdin.
//
// Input: {"dir": node_modules parent, "at": epoch ms, "cases": [{"id", "report": base64, "vcek": base64 DER}]}
// Output: one JSON line per case: {"id", "ok": bool, "error": string|null}
//
// The steps are the library's own cryptographic and binding checks, in its order
// (attestation.js verifySevReport): Report (parse and must-be-zero checks), CertificateChain.fromReport
// (its pinned ARK/ASK), verify.js verifyAttestation (chain, ARK -> ASK -> VCEK, and the ECDSA report
// signature), and from validation.js the VCEK bindings validateVcekTcb (SPLs == REPORTED_TCB) and
// validateVcekHwid (hwID == CHIP_ID). Its default *policy* (minimum TCB and firmware, TSME required,
// committed == current, ...) is left out: that is appraisal, which keybroker's verifier leaves to policy.
// The clock is pinned to "at" (the library checks certificate validity at `new Date()`).
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const input = JSON.parse(await new Promise((resolve) => {
  let data = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => { data += chunk; });
  process.stdin.on('end', () => resolve(data));
}));

const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) { if (args.length === 0) { super(input.at); } else { super(...args); } }
  static now() { return input.at; }
};

const dist = join(input.dir, 'node_modules', '@tinfoilsh', 'verifier', 'dist', 'sev');
const load = (name) => import(pathToFileURL(join(dist, name)).href);
const { Report } = await load('report.js');
const { CertificateChain } = await load('cert-chain.js');
const { verifyAttestation } = await load('verify.js');
const { tcbFromInt } = await load('utils.js');

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));

for (const c of input.cases) {
  let ok = false;
  let error = null;
  try {
    const report = new Report(bytes(c.report));
    const chain = await CertificateChain.fromReport(report, bytes(c.vcek));
    await verifyAttestation(chain, report);
    chain.validateVcekTcb(tcbFromInt(report.reportedTcb));
    chain.validateVcekHwid(report.chipId);
    ok = true;
  } catch (e) {
    error = `${e.name}: ${e.message}${e.cause ? ` (cause: ${e.cause.message ?? e.cause})` : ''}`;
  }
  process.stdout.write(JSON.stringify({ id: c.id, ok, error }) + '\n');
}
