#!/usr/bin/env python3
"""Offline re-implementation of the leave-one-question-out (LOQO) fitting run in
src/quality/fit_run.rs, for quick calibration experiments on a FEATURES_DUMP file.

    FEATURES_DUMP=/tmp/feat.jsonl cargo test --lib fit_shipped_calibration -- --ignored --nocapture
    python3 scripts/loqo_experiments.py /tmp/feat.jsonl

It reproduces the shipped figures exactly (same weights, gate, ridge logistic fit, rounding), then
prints the candidate-feature / ridge experiments and their nested-CV check reported in GRADING.md.

    python3 scripts/loqo_experiments.py --views /tmp/feat.jsonl /tmp/feat-without-question.jsonl

compares, for questions graded without their text, the profiles fitted with question texts (what
calibration v1 did) against the profiles fitted without them (v2), leave-one-question-out
(GRADING.md, "Without the question's text").
Needs numpy. Reads only the dump (features and marks), never answer text.
"""
import json, math, sys
import numpy as np

def load(path):
    rows=[json.loads(l) for l in open(path)]
    for r in rows:
        r['group']=f"{r['set']}/{r['q']}"
    return rows

def rround(x): return math.floor(x+0.5) if x>=0 else -math.floor(-x+0.5)

def clamp_round(m,total,step):
    c=min(max(m,0.0),total)
    r=rround(c/step)*step
    if r>total+1e-9: r=math.floor(total/step)*step
    return r

def step(mx): return 0.5 if mx>=3 else 0.05

def is_long(r): return r['max']>3
def member_long(r): return r['max']>3 and r['set']=='mohler'
def member_short(r): return r['max']<=3

def samples_for(rows, member):
    counts={}
    for r in rows:
        if member(r) and '|' not in r['q']:
            counts[r['set']]=counts.get(r['set'],0)+1
    sets=max(len(counts),1); total=sum(counts.values())
    out=[]
    for r in rows:
        if member(r) and not r['non_answer']:
            w=total/(sets*counts.get(r['set'],1))
            out.append(dict(r, w=w, off='|' in r['q'], t=min(max(r['target']/r['max'],0),1)))
    return out

GATE=['sim_whole','tok_recall','align_recall']
def fit_gate(real,off):
    if not real or not off: return None
    best=None
    for name in GATE:
        rv=sorted(s['f'][name] for s in real); ov=sorted(s['f'][name] for s in off)
        full=rv[0]
        zero=min(ov[rround((len(ov)-1)*0.5)], full-0.1)
        caught=sum(1 for v in ov if v<full)
        if best is None or caught>=best[0]: best=(caught,(name,zero,full))
    return best[1]

def gate_factor(g,f):
    if g is None: return 1.0
    name,zero,full=g; x=f[name]
    if x>=full: return 1.0
    if x<=zero: return 0.0
    return (x-zero)/(full-zero)

def featval(f,name):
    if callable(name): return name(f)
    return f[name]

def fit(samples, feats, ridge, use_gate=True):
    off=[s for s in samples if s['off']]; real=[s for s in samples if not s['off']]
    g=fit_gate(real,off) if use_gate else None
    X=np.array([[featval(s['f'],n) for n in feats] for s in real],dtype=float)
    w=np.array([s['w'] for s in real]); w=w/w.sum()
    y=np.array([s['t'] for s in real])
    mean=(w[:,None]*X).sum(0); sc=np.sqrt((w[:,None]*(X-mean)**2).sum(0)); sc=np.maximum(sc,1e-6)
    Z=np.hstack([np.ones((len(X),1)),(X-mean)/sc])
    p=Z.shape[1]
    my=min(max((y*w).sum(),0.01),0.99)
    beta=np.zeros(p); beta[0]=math.log(my/(1-my))
    R=np.eye(p)*ridge; R[0,0]=1e-12
    for _ in range(50):
        eta=Z@beta; mu=np.clip(1/(1+np.exp(-eta)),1e-6,1-1e-6); v=mu*(1-mu)
        z=eta+(y-mu)/v; wc=w*v
        A=(Z*wc[:,None]).T@Z+R; b=(Z*wc[:,None]).T@z
        nb=np.linalg.solve(A,b)
        ch=np.abs(nb-beta).max(); beta=nb
        if ch<1e-9: break
    return dict(beta=beta,mean=mean,sc=sc,feats=feats,gate=g)

def predict(m, f):
    x=np.array([featval(f,n) for n in m['feats']])
    s=m['beta'][0]+((x-m['mean'])/m['sc'])@m['beta'][1:]
    fr=1/(1+math.exp(-s))
    fr*=gate_factor(m['gate'],f)
    return min(max(fr,0),1)

def cv_set(all_rows, train_rows, setname, feats, ridge, use_gate=True, fitfn=None):
    items=[r for r in all_rows if r['set']==setname and not r['neg']]
    mx=max(r['max'] for r in items)
    member=member_short if mx<=3 else member_long
    pool=samples_for(train_rows, member)
    preds=[None]*len(items)
    groups=sorted(set(r['group'] for r in items))
    for g in groups:
        fold=[s for s in pool if g not in s['group'].split('|')]
        m=(fitfn or fit)(fold,feats,ridge,use_gate)
        for i,r in enumerate(items):
            if r['group']==g:
                fr=0.0 if r['non_answer'] else predict(m,r['f'])
                preds[i]=clamp_round(fr*r['max'],r['max'],step(r['max']))
    p=np.array(preds); t=np.array([r['target'] for r in items])
    return pearson(p,t), float(np.sqrt(((p-t)**2).mean())), p, t

def pearson(a,b):
    a=a-a.mean(); b=b-b.mean()
    d=math.sqrt((a*a).sum()*(b*b).sum())
    return float((a*b).sum()/d) if d>0 else float('nan')

SHIPPED=["tok_recall","tok_precision","align_recall","align_min","kp_tok_min","sim_whole","sim_rel","lex_recall","len_ratio"]
SETS=['mohler','semeval2013_scientsbank','semeval2013_beetle','saf_en','saf_de','asap_sas','os_xie2024']

EXTRA = ['align_precision', 'coverage', 'coverage_soft', 'sim_question', 'sim_gain', 'lex_precision',
         'tok_hit', 'kp_tok_mean', 'q_restate', 'lex_recall_all', 'bigram_recall', 'tok_recall_all',
         'kp_tok_soft', 'kp_rel', 'len_log']


def nested_mohler(rows, configs):
    """Choose a (features, ridge) config by inner LOQO Pearson r on the other Mohler questions,
    then score the held-out question with it: an honest figure for the selection itself."""
    all_rows = [r for r in rows if not r['neg']]
    moh = [r for r in all_rows if r['set'] == 'mohler']
    preds = {}
    for g in sorted(set(r['group'] for r in moh)):
        inner_rows = [r for r in rows if g not in r['group'].split('|')]
        inner_all = [r for r in inner_rows if not r['neg']]
        best = max(configs, key=lambda c: cv_set(inner_all, inner_rows, 'mohler', c[0], c[1])[0])
        pool = samples_for(rows, member_long)
        m = fit([s for s in pool if g not in s['group'].split('|')], best[0], best[1])
        for i, r in enumerate(moh):
            if r['group'] == g:
                fr = 0.0 if r['non_answer'] else predict(m, r['f'])
                preds[i] = clamp_round(fr * 5, 5, 0.5)
    p = np.array([preds[i] for i in range(len(moh))])
    t = np.array([r['target'] for r in moh])
    return pearson(p, t), float(np.sqrt(((p - t) ** 2).mean()))


def cv_across(setname, train_rows, score_rows, feats=SHIPPED, ridge=0.001):
    """LOQO figures of `setname` scored on `score_rows`' features by models fitted on
    `train_rows`' (the same answers measured another way, in the same order)."""
    items = [r for r in score_rows if r['set'] == setname and not r['neg']]
    member = member_short if max(r['max'] for r in items) <= 3 else member_long
    pool = samples_for(train_rows, member)
    preds = [None] * len(items)
    for g in sorted(set(r['group'] for r in items)):
        m = fit([s for s in pool if g not in s['group'].split('|')], feats, ridge)
        for i, r in enumerate(items):
            if r['group'] == g:
                fr = 0.0 if r['non_answer'] else predict(m, r['f'])
                preds[i] = clamp_round(fr * r['max'], r['max'], step(r['max']))
    p = np.array(preds); t = np.array([r['target'] for r in items])
    return pearson(p, t), float(np.sqrt(((p - t) ** 2).mean())), float(p.mean()), float(t.mean())


def compare_views(given_path, missing_path):
    given, missing = load(given_path), load(missing_path)
    assert len(given) == len(missing) and all(
        g['q'] == m['q'] and g['target'] == m['target'] for g, m in zip(given, missing)), \
        'the two dumps must come from one fitting run'
    print('| set | with text, its own fit | without text, fit with texts (v1) | without text, fit without (v2) | human mean |')
    print('|---|---|---|---|---|')
    for s in SETS:
        if not any(r['set'] == s for r in given):
            continue
        cells = []
        for train, score in [(given, given), (given, missing), (missing, missing)]:
            r, e, mean, human = cv_across(s, train, score)
            cells.append(f'{r:.3f} / {e:.3f} / {mean:.2f}')
        print(f'| {s} | ' + ' | '.join(cells) + f' | {human:.2f} |')


def main():
    if len(sys.argv) == 4 and sys.argv[1] == '--views':
        compare_views(sys.argv[2], sys.argv[3])
        return
    rows = load(sys.argv[1] if len(sys.argv) > 1 else '/tmp/feat.jsonl')
    all_rows = [r for r in rows if not r['neg']]
    present = [s for s in SETS if any(r['set'] == s for r in all_rows)]

    def line(label, feats, ridge, sets):
        cells = []
        for s in sets:
            r, e, _, _ = cv_set(all_rows, rows, s, feats, ridge)
            cells.append(f"{s} {r:.3f}/{e:.3f}")
        print(f"{label:36s}", "  ".join(cells), flush=True)

    line('shipped', SHIPPED, 0.001, present)
    for rd in [0.003, 0.01, 0.03, 0.1]:
        line(f'shipped, ridge {rd}', SHIPPED, rd, ['mohler'])
    for x in EXTRA:
        line(f'+ {x}', SHIPPED + [x], 0.001, ['mohler'])
    for add in [['coverage_soft'], ['q_restate'], ['coverage_soft', 'q_restate']]:
        line('+ ' + ', '.join(add), SHIPPED + add, 0.001, present)
    r, e = nested_mohler(rows, [(SHIPPED + ([x] if x else []), 0.001) for x in [None] + EXTRA])
    print(f"nested: best single added feature chosen inside each fold: Mohler {r:.3f}/{e:.3f}")
    r, e = nested_mohler(rows, [(SHIPPED, rd) for rd in [0.001, 0.003, 0.01, 0.03, 0.1]])
    print(f"nested: ridge chosen inside each fold: Mohler {r:.3f}/{e:.3f}")


if __name__ == '__main__':
    main()
